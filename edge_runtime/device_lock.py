"""One `fedge device run` per device state folder.

Two device processes on one <state_dir>/<device_id>/ (a second systemd unit, `fedge device run`
by hand beside the service, a container restarted with the old one alive) both wrote its files
(personal params, pending uploads, seen tasks) and shared one MQTT client id, so the broker kept
kicking each off for the other. The device holds an exclusive flock on `device.lock` in the
folder for its life (kernel/process_lock.py: the kernel drops it on any exit, kill -9 included,
so a stale file never blocks a restart). A second one is refused at start as ServiceUnavailable
(exit 1: its supervisor tries again, and gets in once the first has stopped).

Only `fedge device run` takes it: `fedge device export` and `moments` read the folder while the
device runs, and the simulator runs its devices in one process, each on a folder of its own.
"""

from __future__ import annotations

from pathlib import Path

from .kernel.device_folder import DEVICE_LOCK_FILE
from .kernel.errors import ConfigError
from .kernel.process_lock import process_lock


def device_lock(own: Path):
    """Hold `own`/device.lock (made if missing, given the folder's owner) for the block;
    ServiceUnavailable while another process holds it. `own` exists: the device made it. Both
    errors name the folder absolute: a relative state_dir ("state/dev-001") said nothing of where."""
    own = Path(own).absolute()
    path = own / DEVICE_LOCK_FILE

    def cannot_open(exc: OSError) -> ConfigError:  # a root-owned lock left by a run as root, a folder by its name
        return ConfigError(f"device state folder {own}: cannot open its lock file {path}: {exc.strerror or exc}; "
                           "remove it, or give it the device's user")

    return process_lock(path, lambda holder: f"device state folder {own} is in use by another device process "
                        f"({holder}); stop that one first, or point state_dir elsewhere", cannot_open, owner_of=own)
