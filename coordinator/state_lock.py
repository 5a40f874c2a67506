"""One coordinator per SQLite state_db.

Two `fedge coordinator serve` started on the same state_db by mistake (a second unit, a test
run beside the service) both resumed the open round from it and both wrote to it; they also
share one broker identity, so each kept taking the other's MQTT session. Over Mosquitto the
first died within a second with GroupCommitFailed (a UNIQUE constraint: the other had stored
the same update) and the second went on alone. PostgreSQL has its leader lease for this
(leadership.py); SQLite gets an exclusive flock on `<state_db>.lock`, held for the process's
life and dropped by the kernel when it exits however it exits (kill -9 included), so a stale
lock cannot block a restart. A second service is refused at start as ServiceUnavailable
(exit 1: a supervisor tries again, and gets in once the first has stopped). The flock itself
is the kernel's process_lock.py, which the device holds on its state folder too.
"""

from __future__ import annotations

from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.process_lock import process_lock


def state_db_lock(state_db: str | Path, owner_of: Path | None = None):
    """Hold `<state_db>.lock` (made if missing) for the block; ServiceUnavailable if held.
    owner_of: a lock file this call creates is given that file's owner and group (process_lock)."""
    path = Path(f"{state_db}.lock")

    def cannot_open(exc: OSError) -> ConfigError:
        if isinstance(exc, FileNotFoundError):  # a traceback before: state_db in a folder that does not exist
            return ConfigError(f"state_db {state_db}: no folder {path.parent} to keep it in; create it, or point "
                               "state_db elsewhere")
        # no permission, a read-only filesystem, a folder named <state_db>.lock
        return ConfigError(f"state_db {state_db}: cannot create its lock file {path}: {exc.strerror or exc}")

    return process_lock(path, lambda holder: f"state_db {state_db} is in use by another coordinator ({holder}); "
                        "stop that one first, or point state_db elsewhere", cannot_open, owner_of)
