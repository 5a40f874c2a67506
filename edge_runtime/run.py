"""`fedge device run`: build a device from its config and run its loop until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from .agent import DeviceAgent
from .device import DeviceRuntime
from .device_config import DeviceConfig, read_local_data
from .device_lock import device_lock
from .eligibility_monitor import EligibilityMonitor
from .fetched_models import installed_models
from .kernel.clock import SystemClock
from .kernel.device_folder import ARTIFACTS_DIR, STANDARDIZATION_FILE
from .kernel.errors import ConfigError
from .kernel.files import file_in_the_way
from .kernel.secagg.identity_files import directory_changes, load_directory, load_identity
from .kernel.signal_safe import on_another_thread
from .kernel.transport.mqtt import MqttTransport
from .loop import AgentLoop
from .probes import SystemProbe
from .standardization_record import record_standardization

log = logging.getLogger("fedge.device")


def build_device(cfg: DeviceConfig, probe=None, clock=None, own: Path | None = None) -> tuple[AgentLoop, MqttTransport]:
    """own: the state folder run_device made and locked (None: made here, as tests and tools do)."""
    clock = clock or SystemClock()
    monitor = EligibilityMonitor(probe or SystemProbe(root=cfg.probe.root), cfg.eligibility, clock,
                                 check_interval_s=cfg.probe.check_interval_s, name=cfg.device_id)
    state = Path(cfg.state_dir)
    own = own or make_state_folder(cfg)
    artifacts = own / ARTIFACTS_DIR
    models = installed_models(artifacts)
    data, stats = read_local_data(cfg.data.npz, cfg.data.standardize, cfg.data.statistics)
    record_standardization(own, stats, cfg.data.statistics)  # what `fedge device export` puts in front of the model
    runtime = DeviceRuntime(cfg.device_id, data, models, state, backend=cfg.backend, eligibility=monitor.before,
                            abort_check=monitor.during, seed=cfg.seed)
    transport = MqttTransport(cfg.device_id, cfg.broker, will=DeviceAgent.last_will(cfg.device_id))
    identity, directory = secagg_credentials(cfg)
    agent = DeviceAgent(runtime, transport, clock, artifacts_dir=artifacts, republish_s=cfg.agent.republish_s,
                        checkin_s=cfg.agent.checkin_s, fetch_timeout_s=cfg.agent.fetch_timeout_s,
                        secagg_identity=identity, secagg_directory=directory,
                        own_noise_floor=cfg.privacy.own_noise_multiplier, max_task_s=cfg.agent.max_task_s,
                        max_pace_s=cfg.agent.max_pace_s, upload_link=cfg.agent.upload_link())
    return AgentLoop(agent, poll_s=cfg.agent.poll_s), transport


def make_state_folder(cfg: DeviceConfig) -> Path:
    """<state_dir>/<device_id>, made 0700 if missing: personal params and residuals live there."""
    own = Path(cfg.state_dir) / cfg.device_id
    _refuse_file_in_the_way(own)
    if not own.exists():
        own.mkdir(mode=0o700, parents=True)
    return own


def _refuse_file_in_the_way(own: Path) -> None:
    """ConfigError when a file stands where the state folder or one above it goes: the mkdir's
    NotADirectoryError was a traceback, and (exit 1) systemd restarted the device into it forever.
    A missing path stays the mkdir's: a disk mounted late is a folder, never a file."""
    blocker = file_in_the_way(own)
    if blocker is not None:
        raise ConfigError(f"state_dir: {blocker} is a file, not a folder, so the device's state folder {own} "
                          "cannot be made; point state_dir at a folder")


def secagg_credentials(cfg: DeviceConfig) -> tuple[bytes | None, dict[str, bytes] | None]:
    """The device's identity key and the fleet's directory ([secagg]), or (None, None)."""
    if not cfg.secagg.identity_file:
        return None, None
    return load_identity(cfg.secagg.identity_file), load_directory(cfg.secagg.directory_file)


def run_device(cfg: DeviceConfig) -> int:
    own = make_state_folder(cfg)
    with device_lock(own):  # before any state file is read or written (device_lock.py)
        return _run(cfg, own)


def _run(cfg: DeviceConfig, own: Path) -> int:
    loop, transport = build_device(cfg, own=own)
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop() sets an Event the loop waits on: not in the handler
        signal.signal(sig, on_another_thread(loop.stop, "fedge-stop"))
    install_reload(loop.agent, cfg.data.npz, cfg.data.standardize, own, statistics=cfg.data.statistics,
                   directory_file=cfg.secagg.directory_file)  # set only with identity_file (device_config)
    log.info("device %s: connecting to %s", cfg.device_id, cfg.broker.url)
    transport.connect(timeout=0)  # the loop waits for the link; paho keeps retrying with backoff
    try:
        loop.run()
    finally:
        transport.close()
    if loop.stop_event.is_set():  # the journal says why the device ended (the handler itself does not log)
        log.info("device %s: stopped on SIGTERM/SIGINT", cfg.device_id)
    return 0


def reload_directory(participant, path: str, device_id: str) -> bool:
    """Read the identity directory again into the secure-aggregation participant; False (the old
    one kept, one log line) when the file is refused. A device checks each neighbour's signed
    advertisement against it and declines the whole round for a neighbour it lacks: read only at
    start, every device had to restart before a newly provisioned one could join any of their
    rounds (the coordinator reloads its copy on SIGHUP too: coordinator/secagg/reload.py). A new
    dict, assigned whole: a round under way reads either the old map or the new one."""
    old = participant.directory or {}
    try:
        new = load_directory(path)
    except Exception as exc:  # noqa: BLE001 - a half-copied file must not stop the device: keep the old directory
        log.error("device %s: SIGHUP: kept the identity directory read before (%d identities): %s", device_id,
                  len(old), exc)
        return False
    participant.directory = new
    log.info("device %s: SIGHUP: identity directory %s reloaded: %d identities, %d added, %d removed, %d re-keyed",
             device_id, path, len(new), *map(len, directory_changes(old, new)))
    return True


def install_reload(agent, npz: str, standardize: bool = False, own: Path | None = None, statistics: str = "",
                   directory_file: str = "") -> None:
    """SIGHUP (`systemctl reload fedge-device`) re-reads the data file (standardized again with
    its new training statistics when `standardize`, [data] standardize, or with the fleet's from
    the `statistics` file, [data] statistics, read again too; and those recorded under
    `own`, the device's state folder, once in use: standardization_record.py). The reload runs on its
    own thread: the handler may interrupt a training step, and replace_data waits for it. Then
    the agent checks in at once: a device parked for bad_dataset (and paced for pace_declined_s)
    would otherwise wait up to 10 minutes to tell the coordinator its data changed.
    With `directory_file` ([secagg] directory_file, when the device has an identity) it re-reads
    the fleet's identity directory first (reload_directory), whatever becomes of the data."""
    runtime = agent.runtime

    def reload() -> None:
        if directory_file:
            reload_directory(agent.secagg, directory_file, runtime.device_id)
        try:
            data, stats = read_local_data(npz, standardize, statistics)
        except Exception as exc:  # a half-copied file must not stop the device: keep the old data
            log.error("device %s: SIGHUP: kept the old data: %s", runtime.device_id, exc)
            return
        runtime.replace_data(data)
        if own is not None:
            try:
                record_standardization(own, stats, statistics)
            except OSError as exc:  # a full disk: the device runs on, and the old record must not stay
                (Path(own) / STANDARDIZATION_FILE).unlink(missing_ok=True)
                log.error("device %s: SIGHUP: could not record its standardization (an export reads the data "
                          "file instead): %s", runtime.device_id, exc)
        log.info("device %s: SIGHUP: reloaded %s (%d training, %d test examples)", runtime.device_id, npz,
                 len(data.y_train), len(data.y_test))
        agent.check_in_soon()

    signal.signal(signal.SIGHUP, on_another_thread(reload, "fedge-reload"))
