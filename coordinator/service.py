"""`fedge coordinator serve --config coordinator.toml`: the coordinator as an ops service.

    [broker]                       # edge_runtime.transport.mqtt.MqttSettings
    url = "mqtt://127.0.0.1:1883"
    fallback_urls = []             # a cluster's other nodes (ejabberd): failover, and retained messages on each
    username = "coordinator"
    password = "..."

    [service]
    min_devices = 2                # eligible devices needed before a round begins
    rounds = 0                     # exit once the model has this many committed rounds (version); 0 = forever
    round_pause_s = 0.0
    metrics_linger_s = 0.0         # after reaching `rounds`, keep /metrics up this long for the final scrape
    shard_credentials = "creds"    # with shards = K: the workers' fedge-shard-<k>.toml (sharding/identity.py)

    [coordinator]                  # coordinator.config.CoordinatorConfig
    artifacts_dir = "artifacts/mnist"   # from `fedge build-artifacts`; served to devices that lack it
    state_db = "coordinator.db"         # SQLite; a restart resumes from it
    metrics_port = 9108
    clients_per_round = 10
    round_deadline_s = 120

SIGHUP (`systemctl reload`) re-reads [coordinator.secure_aggregation] directory_file, the fleet's
identity directory, and nothing else (secagg/reload.py): a device provisioned since the start is
selectable from the next round, and a file refused at reload keeps the directory read before. The
rest of the config applies only at a restart. Without a directory (or with secure aggregation
off), and on an aggregator worker, SIGHUP is logged and ignored.

Exit status: 0 after `rounds` (or SIGTERM); 3 (EXIT_PRIVACY_BUDGET) when the privacy budget
refused the next round and [coordinator.privacy] on_exhausted = "stop": the job is done, its
budget spent. A restart refuses again at once, so a supervisor should not restart on 3
(systemd: RestartPreventExitStatus=3).

With `state_dsn` (PostgreSQL) several services may share one database: each first waits,
as a standby, for the leader lease (leadership.py; "standby: waiting for leadership"), then
resumes from the store exactly as a restart does (the open round included). A leader whose
lease connection fails, or whose writes are fenced out by a newer leader, exits with 4
(EXIT_LOST_LEADERSHIP), so its supervisor restarts it, as a standby.

With `[coordinator] shards = K` (PostgreSQL only) the leader ingests no update: K aggregator
workers, `fedge coordinator serve --role worker --config <the same file>`, each holding one
shard's lease, validate and sum them (coordinator/sharding). Extra workers stand by for a
shard whose worker died.
"""

from __future__ import annotations

import logging
import signal
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

from fedge.edge_runtime.kernel.configfile import load_config
from fedge.edge_runtime.kernel.errors import ConfigError, PublishRefused
from fedge.edge_runtime.kernel.files import load_npz
from fedge.edge_runtime.kernel.manifest import load_manifest
from fedge.edge_runtime.kernel.protocol import DEVICE_MAX_TASK_S
from fedge.edge_runtime.kernel.signal_safe import on_another_thread
from fedge.edge_runtime.kernel.transport.settings import MqttSettings

from .async_mode.machine import OUT_PER_SLOT
from .async_mode.server import coordinator_class
from .config import CoordinatorConfig
from .errors import StoreLinkLost
from .leadership import LeadershipError, PostgresLease, watch_lease
from .limits import MAX_FLEET
from .loop import STOPS_THE_SERVICE, CoordinatorLoop
from .metrics import CoordinatorMetrics
from .metrics_http import serve_metrics
from .registry import DRAIN_BUDGET_S
from .retain_fanout import cluster_transport
from .sampling import selection_size
from .secagg.config import preload_identities
from .secagg.reload import ReloadAsked, reloadable
from .server import Coordinator
from .sharding.leader import ShardedCoordinator
from .sharding.serve import run_worker
from .state_file import sqlite_errors_named
from .state_lock import state_db_lock
from .store import open_store
from .strategies import strategy_from_config

log = logging.getLogger("fedge.coordinator")
EXIT_PRIVACY_BUDGET = 3  # the privacy budget ended the job (module docstring)
EXIT_LOST_LEADERSHIP = 4  # the lease was lost or a newer leader fenced us out: restart as a standby


@dataclass(frozen=True)
class ServiceSettings:
    min_devices: int = 1
    rounds: int = 0  # exit once the global model's version (committed rounds, across restarts) reaches this; 0 = never
    round_pause_s: float = 0.0
    # A service that exits right after its last commit takes that commit's metrics with it:
    # Prometheus scrapes every 15-60 s and would never see the final round.
    metrics_linger_s: float = 0.0
    client_id: str = "coordinator"
    # A folder of fedge-shard-<k>.toml (`fedge provision coordinator --shards K`): a sharded
    # fleet's worker k logs in as fedge-shard-k (sharding/identity.py); "" = as [broker] says.
    shard_credentials: str = ""

    def __post_init__(self) -> None:
        for name, low in (("min_devices", 1), ("rounds", 0), ("round_pause_s", 0), ("metrics_linger_s", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"service.{name} must be >= {low}, got {getattr(self, name)}")
        if self.min_devices > MAX_FLEET:  # past any fleet fedge runs (limits.py): a typo that holds every round back
            raise ConfigError(f"service.min_devices must be at most {MAX_FLEET:,}, got {self.min_devices}")
        if not self.client_id:  # MQTT gives a persistent session (clean_start = false) only to a named client
            raise ConfigError("service.client_id must not be empty")


@dataclass(frozen=True)
class ServiceConfig:
    broker: MqttSettings = field(default_factory=MqttSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    coordinator: CoordinatorConfig = field(default_factory=CoordinatorConfig)

    def __post_init__(self) -> None:
        if not self.coordinator.artifacts_dir:
            raise ConfigError("coordinator.artifacts_dir is required: build one with `fedge build-artifacts SPEC "
                              "DIR`")
        if self.service.min_devices > self.coordinator.max_devices:  # the registry could never hold that many
            raise ConfigError(f"service.min_devices {self.service.min_devices} is above coordinator.max_devices "
                              f"{self.coordinator.max_devices}: the service would wait for them for good")


def load_service_config(path: str | Path) -> ServiceConfig:
    return load_config(ServiceConfig, path)


def coordinator_link(broker: MqttSettings, cfg: CoordinatorConfig) -> MqttSettings:
    """The coordinator's broker settings, with chunk reassembly bounded by what it accepts.

    Every inbound message over max_update_bytes is refused (validation.decode_report), updates
    being the largest legitimate ones (a FetchRequest or CheckIn is a few hundred bytes), so
    no sender may hold more than that in incomplete chunk sets, and all senders together no
    more than one update from each device a round selects. What the coordinator publishes
    (tasks with inline params, artifact files) keeps broker.max_message_bytes.
    """
    per_sender = cfg.max_update_bytes
    if broker.max_inbound_bytes:
        per_sender = min(per_sender, broker.max_inbound_bytes)
    # async: tasks out, holding a slot or released, reach OUT_PER_SLOT x concurrency (machine.py)
    in_flight = OUT_PER_SLOT * cfg.async_.concurrency if cfg.mode == "async" else cfg.clients_per_round
    selected = selection_size(in_flight, cfg.over_selection, in_flight * 100)
    total = max(4, selected) * per_sender
    if broker.max_pending_bytes:
        total = min(total, broker.max_pending_bytes)
    return replace(broker, max_inbound_bytes=per_sender, max_pending_bytes=total)


def warn_past_device_cap(deadline_s: float) -> None:
    """A fedge device stops any task after its own [agent] max_task_s (work_limits.py), which the
    coordinator cannot see: a longer round deadline is time no default device will train."""
    cap = DEVICE_MAX_TASK_S
    if deadline_s > cap:
        log.warning("coordinator: round_deadline_s = %g s, but a fedge device stops training any one task after "
                    "its [agent] max_task_s (%g s by default) and declines it as aborted:time_limit; raise that on "
                    "the devices too, or keep the deadline <= %g s", deadline_s, cap, cap)


def say_implied(cfg: CoordinatorConfig) -> None:
    """One line for the keys the file left out that privacy or secure aggregation chose (config.IMPLIED)."""
    if cfg.implied:
        log.info("coordinator: the config file sets no %s, and the default is refused with privacy or secure "
                 "aggregation on: using %s", " or ".join(note.split(" ", 1)[0] for note in cfg.implied),
                 ", ".join(cfg.implied))


def build_service(cfg: ServiceConfig, epoch: int | None = None) -> tuple[CoordinatorLoop, Coordinator]:
    """epoch: the leader epoch a PostgreSQL store fences its writes with (leadership.py)."""
    art = Path(cfg.coordinator.artifacts_dir)
    manifest = load_manifest(art, verify=True)
    warn_past_device_cap(cfg.coordinator.round_deadline_s)
    say_implied(cfg.coordinator)
    values = load_npz(art / "params_init.npz")
    initial = {p.name: values[p.name] for p in manifest.by_role("shared")}
    metrics = CoordinatorMetrics()
    transport = cluster_transport(cfg.service.client_id, coordinator_link(cfg.broker, cfg.coordinator))
    cls = ShardedCoordinator if cfg.coordinator.shards else coordinator_class(cfg.coordinator)
    with sqlite_errors_named(cfg.coordinator.state_db):  # a damaged file: StoreCorrupt, not a traceback
        store = open_store(cfg.coordinator, epoch)
        coordinator = cls(transport, strategy_from_config(cfg.coordinator), manifest,
                          initial, cfg.coordinator, store=store, metrics=metrics)
    target = cfg.service.rounds

    def should_stop(record) -> bool:
        return bool(target) and coordinator.state.version >= target

    loop = CoordinatorLoop(coordinator, min_devices=cfg.service.min_devices, round_pause_s=cfg.service.round_pause_s,
                           should_stop=should_stop)
    return loop, coordinator


def on_hangup(*_) -> None:
    """SIGHUP (an operator's `kill -HUP` or `systemctl reload`, a closed terminal) killed the service
    by its default action: no log line, no flush of the last Acks. A service without an identity
    directory to reload (secagg/reload.reloadable), or a worker, reloads nothing; it says so (from
    another thread: a log write in the handler could land inside the main thread's own write to
    stderr, a reentrant-call RuntimeError) and goes on."""
    on_another_thread(_say_hangup_ignored, "fedge-hangup")()


def _say_hangup_ignored() -> None:
    log.warning("coordinator: SIGHUP received and ignored: the service does not reload its config (SIGHUP "
                "reloads only a secure leader's [coordinator.secure_aggregation] directory_file, none here); "
                "restart it to apply a change (systemctl restart, or SIGTERM and start)")


def drain_refreshes(coordinator: Coordinator) -> None:
    """The registry's queued last-seen refreshes, at a clean stop and after the Acks' flush, for at
    most registry.DRAIN_BUDGET_S (a stop must end within systemd's TimeoutStopSec); what is left, or
    what a failed write kept, stays older in the store, which is safe (registry.py)."""
    registry = coordinator.registry
    try:
        written = registry.drain_refreshes(coordinator.clock.now)
    except Exception as exc:  # noqa: BLE001 - the service is stopping: say so, exit as it would have
        if isinstance(exc, STOPS_THE_SERVICE) and not isinstance(exc, StoreLinkLost):
            raise  # a broken link is stopping anyway; the others say how to exit (StoreGone: 2)
        log.error("coordinator: writing the queued last-seen refreshes at stop failed (%s: %s); %d stay older "
                  "in the store", type(exc).__name__, exc, len(registry.queued_refreshes))
        return
    if registry.queued_refreshes:
        log.warning("coordinator: wrote %d queued last-seen refreshes at stop in the %.0f s allowed; %d stay older "
                    "in the store", written, DRAIN_BUDGET_S, len(registry.queued_refreshes))


def run_service(cfg: ServiceConfig, role: str = "leader") -> int:
    """role "leader": the coordinator (with state_dsn, a standby until it leads); "worker": an
    aggregator worker of a sharded fleet (coordinator/sharding/serve.py)."""
    if role not in ("leader", "worker"):
        raise ConfigError(f"role {role!r}: choose leader or worker")
    stopping = threading.Event()
    directory_reload = ReloadAsked()  # SIGHUP; the loop reads the file (never the handler itself)
    loops: list[CoordinatorLoop] = []

    def on_signal() -> None:
        stopping.set()
        for loop in loops:
            loop.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):  # Events' set(): not in the handler (kernel/signal_safe.py)
        signal.signal(sig, on_another_thread(on_signal, "fedge-stop"))
    if role == "leader" and reloadable(cfg.coordinator.secure_aggregation):  # a standby's loop reads it at takeover
        signal.signal(signal.SIGHUP, lambda *_: directory_reload.set())
    else:
        signal.signal(signal.SIGHUP, on_hangup)
    # After the handlers: a SIGHUP during a long read (up to 256 MiB) killed the service by its default
    # action, and systemd counts a death by SIGHUP as clean (Restart=on-failure left it down).
    if role == "leader":  # a bad identity directory stops a standby now, not at its takeover; a worker never reads it
        preload_identities(cfg.coordinator.secure_aggregation)
    if role == "worker":
        return run_worker(cfg, stopping, coordinator_link)
    if not cfg.coordinator.state_dsn:
        if not cfg.coordinator.state_db:
            return _serve(cfg, None, stopping, loops, directory_reload)
        with state_db_lock(cfg.coordinator.state_db):  # one service per SQLite state (state_lock.py)
            return _serve(cfg, None, stopping, loops, directory_reload)
    lease = PostgresLease(cfg.coordinator.state_dsn)
    try:
        if not lease.wait(stopping):  # SIGTERM while standby
            return 0
        return _serve(cfg, lease, stopping, loops, directory_reload)
    except LeadershipError as exc:
        log.error("coordinator: no longer the leader, exiting to restart as a standby: %s", exc)
        return EXIT_LOST_LEADERSHIP
    finally:
        lease.close()  # ends the session: a standby takes over at once


def _serve(cfg: ServiceConfig, lease: PostgresLease | None, stopping: threading.Event,
           loops: list[CoordinatorLoop], directory_reload: ReloadAsked | None = None) -> int:
    loop, coordinator = build_service(cfg, None if lease is None else lease.epoch)
    loop.directory_reload = directory_reload  # set by SIGHUP: the loop reads the file (secagg/reload.py)
    loops.append(loop)
    if stopping.is_set():
        loop.stop()
    lost: list[LeadershipError] = []
    if lease is not None:
        watch_lease(lease, lambda exc: (lost.append(exc), loop.stop()), stopping)
    if cfg.coordinator.metrics_port:
        serve_metrics(coordinator.metrics.registry, cfg.coordinator.metrics_host, cfg.coordinator.metrics_port)
        log.info("metrics on http://%s:%d/metrics", cfg.coordinator.metrics_host, cfg.coordinator.metrics_port)
    log.info("coordinator: model %s v%d, connecting to %s", coordinator.manifest.model_id, coordinator.state.version,
             cfg.broker.url)
    if cfg.service.rounds and coordinator.state.version >= cfg.service.rounds:
        log.info("coordinator: model already at version %d >= [service] rounds = %d; nothing to do",
                 coordinator.state.version, cfg.service.rounds)
        return 0
    coordinator.transport.connect(timeout=0)
    status = 0
    try:
        with sqlite_errors_named(cfg.coordinator.state_db):  # a round's open or close the store refused
            loop.run()
    finally:
        # The last round's Acks must reach the broker, or every device of that round resends
        # its update to a coordinator that is gone.
        try:
            if coordinator.transport.connected and not coordinator.transport.flush(timeout=10):
                log.warning("coordinator: some publishes were not acknowledged by the broker before exit")
        except PublishRefused as exc:
            log.error("coordinator: PublishRefused before exit: %s", exc)
        coordinator.transport.close()
    if lost:  # a deposed leader writes nothing more: its rows are the new leader's to refresh
        raise lost[0]
    with sqlite_errors_named(cfg.coordinator.state_db):
        drain_refreshes(coordinator)
    if loop.exhausted is not None:
        log.error("coordinator: privacy budget exhausted at version %d, job ended: %s", coordinator.state.version,
                  loop.exhausted.why)
        status = EXIT_PRIVACY_BUDGET
    if cfg.coordinator.metrics_port and cfg.service.metrics_linger_s and not stopping.is_set():
        log.info("coordinator: done at version %d; metrics stay up %.0f s", coordinator.state.version,
                 cfg.service.metrics_linger_s)
        stopping.wait(cfg.service.metrics_linger_s)
    if stopping.is_set():  # the journal says why the service ended (the handler itself does not log)
        log.info("coordinator: stopped on SIGTERM/SIGINT at version %d", coordinator.state.version)
    return status
