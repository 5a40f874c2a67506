"""The coordinator loop: registry, rounds, validation and aggregation over a Transport.

This is the one place on the coordinator side that touches the transport and the clock.
The same class runs over the in-memory broker in simulation and over MQTT in deployment.
Everything else it uses is a value or a pure function (rounds, validation, pace, strategies)
or one concern behind a small object (store: SQLite; metrics: Prometheus; artifacts: files).

With a RoundStore, every step is written before the message that depends on it leaves:
the round before its tasks, an update before its Ack, the new model before the round
counts as committed. store.py argues why a `kill -9` between any two steps is safe.
Without one (store=None, the simulator) the same code runs wholly in memory.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, deque
from dataclasses import asdict, replace

import numpy as np

from fedge.edge_runtime.kernel.clock import SystemClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError, ConnectionLost, NotConnected, PayloadTooLarge, PublishRefused
from fedge.edge_runtime.kernel.manifest import Manifest
from fedge.edge_runtime.kernel.protocol import (ANNOUNCE_TOPIC, Ack, Announcement, CheckIn, Decline, FetchRequest, Pace,
                                                RoundModel, Status, TrainTask, Update, all_devices_topic, device_of,
                                                device_topic, model_part_topic)
from fedge.edge_runtime.kernel.round_model import split_round_model
from fedge.edge_runtime.kernel.transport.base import Transport
from fedge.edge_runtime.kernel.update_codec import encode_dense

from . import pace
from .robust.aggregators import EXTRA_KEY, RobustState, advance, make_aggregator
from .artifacts import ArtifactUnavailable, FetchRefused, UnknownTask, open_artifacts
from .config import CoordinatorConfig
from .errors import StaleRound, UnexpectedMessage, UpdateRejected
from .metrics import CoordinatorMetrics
from .records import DeviceRecord, OpenRound, RoundRecord, count_update, resume
from .rounds import Phase, RoundMachine
from .sampling import sample_devices, selection_size
from .store import RoundStore, StoredDecline, StoredDevice, StoredRound, StoredUpdate
from .strategies import AggregateInput, ServerState, Strategy
from .validation import (RoundContext, check_contents, check_control, check_current, check_not_seen, decode_report,
                         payload_digest, update_key)

log = logging.getLogger("fedge.coordinator")

_RECENT_ROUNDS = 8  # closed rounds whose update keys stay in memory when there is no store
_QUIET = ("stale_round", "duplicate")  # expected after early closes and re-publishes: INFO, not WARNING


class Coordinator:
    """One coordinator: `start()` once, then loop `pump()` (one inbound message each) and
    `tick()` (closes the round at its deadline or when it is done), and call `begin_round()`
    whenever no round is open. Every method returns quickly; the caller owns sleeping.

    Public state for simulators and reports: `state` (ServerState), `round` (OpenRound or
    None), `history` (RoundRecords of this process), `rejections` and `declines` (Counters
    by reason, the same numbers the metrics export), `registry` (device_id -> DeviceRecord).
    """

    def __init__(
        self,
        transport: Transport,
        strategy: Strategy,
        manifest: Manifest,
        initial_shared: dict[str, np.ndarray],
        config: CoordinatorConfig,
        clock=None,
        store: RoundStore | None = None,
        metrics: CoordinatorMetrics | None = None,
    ):
        """With a store, state (model, strategy state, open round, registry) is loaded from it
        and an interrupted round resumes; `initial_shared` only seeds a fresh store."""
        self.transport = transport
        self.strategy = strategy
        self.manifest = manifest
        self.config = config
        self.clock = clock or SystemClock()
        self.store = store
        self.metrics = metrics or CoordinatorMetrics()
        self.metrics.watch_transport(transport)
        self.artifacts = open_artifacts(config, manifest.model_id)
        self.manifest_sha256 = self.artifacts.manifest_sha256 if self.artifacts else ""
        self.shapes = {p.name: p.shape for p in manifest.by_role("shared")}
        self.state: ServerState = strategy.init(initial_shared)
        self.registry: dict[str, DeviceRecord] = {}
        self.round: OpenRound | None = None
        self._late_up = (0, 0)  # (bytes, dense bytes) of Updates that came while no round was open
        self.next_round_id = 1
        self.history: list[RoundRecord] = []
        self.rejections: Counter[str] = Counter()
        self.declines: Counter[str] = Counter()
        self._recent: deque[dict] = deque(maxlen=_RECENT_ROUNDS)  # `seen` of closed rounds, without a store
        self._logged: Counter[str] = Counter()
        self._parts_retained = 0  # model-part topics this process left a retained message on
        self._announce_due = False  # the last announcement could not be published; tick() retries
        self.session = uuid.uuid4().hex  # in every Announcement: devices check in again when it changes
        # What robust aggregators learn across rounds (norm history, last aggregate): committed
        # with the model in ServerState.extra, so a restart resumes it (_load).
        self.robust = RobustState()
        if store is not None:
            self._load(store)
        self._eligible = sum(d.eligible for d in self.registry.values())  # kept up to date by _register
        self.metrics.model_version.set(self.state.version)
        self.metrics.devices(len(self.registry), self._eligible)

    def start(self) -> None:
        for channel in ("checkin", "update", "status", "fetch"):
            self.transport.subscribe(all_devices_topic(channel))
        if self.round is not None:  # resumed: tasks may have been lost with the old process or broker
            self._publish_model()
            self._resend_tasks()
            self.metrics.round_begun(self.round.ctx.round_id)
        self._announce()

    def on_reconnect(self) -> None:
        """After the link to the broker came back: a broker killed with -9 loses PUBACKed
        QoS 1 messages, so resend the open round's tasks to devices that have not answered
        (they ignore task ids they already hold) and the retained announcement."""
        if self.round is not None:
            self.round.task_sent.clear()
            self._publish_model()  # a broker without persistence forgot the retained parts
            self._resend_tasks()
        self._announce()

    def _resend_tasks(self) -> None:
        now = self.clock.now()
        for device_id in self.round.machine.selected:
            if self.round.machine.expects(device_id):
                self._send_task(device_id, now)

    # ------------------------------------------------------------------ inbound

    def pump(self, timeout: float | None = 0.0) -> bool:
        """Handle at most one inbound message; True if one was handled."""
        msg = self.transport.receive(timeout)
        if msg is None:
            return False
        self.metrics.bytes_up.inc(len(msg.payload))
        sender, channel = device_of(msg.topic) or (None, "")
        try:
            report = decode_report(msg.payload, self.config.max_update_bytes)
        except UpdateRejected as exc:
            self._reject(exc, sender, None)
            return True
        mine = getattr(report, "device_id", None) == sender
        if isinstance(report, CheckIn) and channel == "checkin" and mine:
            self._check_in(report)
        elif isinstance(report, (Update, Decline)) and channel == "update":
            self._report(report, sender, len(msg.payload))
        elif isinstance(report, FetchRequest) and channel == "fetch" and mine:
            self._fetch(report)
        elif isinstance(report, Status) and channel == "status" and mine:
            if not report.online and report.device_id in self.registry:
                self._register(report.device_id, False, "offline", self.registry[report.device_id].num_examples)
        else:  # counted like any refusal, so a device talking on the wrong channel shows in the metrics
            self._reject(UnexpectedMessage(f"{type(report).__name__} on {msg.topic}"), sender, None)
        return True

    def _check_in(self, msg: CheckIn) -> None:
        self._register(msg.device_id, msg.eligible, msg.reason, msg.num_examples)
        reason = pace.reason_for(self.round.machine if self.round else None, msg.device_id, msg.eligible)
        if reason is None:  # selected but silent: its task was probably lost; it declines if it cannot train
            self._send_task(msg.device_id, self.clock.now())
        else:
            self._pace(msg.device_id, reason)

    def _register(self, device_id: str, eligible: bool, reason: str, num_examples: int) -> None:
        old = self.registry.get(device_id)
        self.registry[device_id] = DeviceRecord(device_id, self.clock.now(), eligible, reason, num_examples)
        changed = old is None or (old.eligible, old.reason, old.num_examples) != (eligible, reason, num_examples)
        if changed and self.store is not None:  # last_seen alone is not worth a disk write per check-in
            self.store.save_device(StoredDevice(device_id, self.clock.wall(), eligible, reason, num_examples))
        self._eligible += int(eligible) - int(old is not None and old.eligible)
        self.metrics.devices(len(self.registry), self._eligible)

    def _report(self, report: Update | Decline, sender: str | None, size: int) -> None:
        rnd = self.round
        if sender in self.registry:
            self.registry[sender].last_seen = self.clock.now()
        if isinstance(report, Update):
            # Everything that crossed the uplink counts, accepted or not; between rounds, toward the next.
            dense = size - len(report.payload) - len(report.control) + report.dense_bytes
            if rnd is not None:
                rnd.bytes_up += size
                rnd.bytes_up_dense += dense
            else:
                self._late_up = (self._late_up[0] + size, self._late_up[1] + dense)
        try:
            if isinstance(report, Decline):
                self._decline(report, sender)
                return
            delta, control = self._admit(report, sender)
        except UpdateRejected as exc:
            self._reject(exc, sender, report)
            return
        self._accept(report, delta, control)

    def _admit(self, update: Update, sender: str | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
        """The validation chain (validation.py's order); returns the dense delta and Δc_i (or None)."""
        rnd = self.round
        try:
            if rnd is None:
                raise _stale(update)
            check_current(update, rnd.ctx, sender)
        except StaleRound:
            if sender == update.device_id:  # counted in a closed round, its Ack lost: a duplicate
                check_not_seen(update, self._counted_before(update))
            raise
        check_not_seen(update, rnd.seen)
        if not rnd.machine.expects(update.device_id):
            raise _stale(update)
        return check_contents(update, rnd.ctx), check_control(update, rnd.ctx)

    def _accept(self, update: Update, delta: dict[str, np.ndarray], control: dict[str, np.ndarray] | None) -> None:
        rnd = self.round
        digest = payload_digest(update)
        if self.store is not None:  # durable before the Ack: see store.py
            self.store.add_update(rnd.ctx.round_id, StoredUpdate(rnd.events, update.device_id, update.update_id,
                                                                 digest, update.num_examples, update.payload,
                                                                 update.control))
        rnd.events += 1
        count_update(rnd, update.device_id, update.update_id, digest, delta, update.num_examples, control)
        self.metrics.accepted.inc()
        self._ack(update, True, "")

    def _decline(self, decline: Decline, sender: str | None) -> None:
        rnd = self.round
        if rnd is None:
            raise _stale(decline)
        check_current(decline, rnd.ctx, sender)
        if decline.device_id in rnd.decline_from:
            return  # counted once per device and round, so a device cannot inflate the label set
        rnd.decline_from.add(decline.device_id)
        self.declines[decline.reason] += 1
        self.metrics.declined(decline.reason)
        log.info("round %d: %s declined: %s", rnd.ctx.round_id, decline.device_id, decline.reason)
        if rnd.machine.expects(decline.device_id):
            if self.store is not None:
                self.store.add_decline(rnd.ctx.round_id, StoredDecline(rnd.events, decline.device_id, decline.reason))
            rnd.events += 1
            rnd.machine.on_decline(decline.device_id, decline.reason)
        self._pace(decline.device_id, pace.DECLINED)

    def _counted_before(self, update: Update) -> dict:
        key = update_key(update)
        if self.store is not None:
            digest = self.store.counted_digest(*key)
        else:
            digest = next((seen[key] for seen in self._recent if key in seen), None)
        return {key: digest} if digest is not None else {}

    def _fetch(self, request: FetchRequest) -> None:
        if request.task_id:
            self._send_inline(request)
            return
        try:
            if self.artifacts is None:
                raise ArtifactUnavailable("this coordinator serves no artifacts (artifacts_dir is unset)")
            for item in self.artifacts.transfer(request, self.clock.now()):
                self._send(device_topic(request.device_id, "artifact"), encode_message(item))
                self.metrics.artifact_bytes.inc(len(item.data))
        except FetchRefused as exc:
            self._reject(exc, request.device_id, None)
            return
        self.metrics.transfers.inc()
        log.info("sent the files of %s to %s", self.artifacts.model_id, request.device_id)

    # ------------------------------------------------------------------ outbound

    def _reject(self, exc: UpdateRejected | FetchRefused, sender: str | None, report) -> None:
        self.rejections[exc.reason] += 1
        self.metrics.rejected(exc.reason)
        level = logging.INFO if exc.reason in _QUIET else logging.WARNING
        self._log(level, exc.reason, "rejected message from %s: %s (%s)", sender or "?", exc.reason, exc)
        if isinstance(report, Update) and sender == report.device_id:
            # A duplicate was counted before: ack it as accepted so the device stops resending.
            self._ack(report, exc.reason == "duplicate", exc.reason)

    def _ack(self, update: Update, accepted: bool, reason: str) -> None:
        ack = encode_message(Ack(update.device_id, update.round_id, update.task_id, update.update_id, accepted, reason))
        if self.round is not None:
            self.round.bytes_down += len(ack)
        self._send(device_topic(update.device_id, "ack"), ack)

    def _send_task(self, device_id: str, now: float, inline: bool = False) -> None:
        rnd = self.round
        sent = rnd.inline_sent if inline else rnd.task_sent
        last = sent.get(device_id)
        remaining = rnd.machine.deadline - now
        if remaining <= 0 or (last is not None and now - last < self.config.task_resend_s):
            return
        sent[device_id] = now
        ctx = rnd.ctx
        by_ref = bool(rnd.round_model_sha256) and not inline
        task = TrainTask(round_id=ctx.round_id, task_id=ctx.tasks[device_id], device_id=device_id,
                         model_id=ctx.model_id, model_version=ctx.model_version,
                         params=b"" if by_ref else rnd.params_bytes, hyper=rnd.hyper,
                         compression=self.config.compression, deadline_s=remaining,
                         seed=self.config.seed * 1_000_003 + ctx.round_id,
                         correction=b"" if by_ref else rnd.correction_bytes, manifest_sha256=self.manifest_sha256,
                         round_model_sha256=rnd.round_model_sha256 if by_ref else "")
        payload = encode_message(task)
        rnd.bytes_down += len(payload)
        self._send(device_topic(device_id, "task"), payload)

    def _send_inline(self, request: FetchRequest) -> None:
        """A device could not assemble the round's model from its parts: its task again, params inline."""
        rnd = self.round
        device_id = request.device_id
        if rnd is None or rnd.ctx.tasks.get(device_id) != request.task_id or not rnd.machine.expects(device_id):
            self._reject(UnknownTask(f"task {request.task_id} is not open for {device_id}"), device_id, None)
            return
        log.info("round %d: task for %s sent again with its params inline", rnd.ctx.round_id, device_id)
        self._send_task(device_id, self.clock.now(), inline=True)

    def _publish_model(self) -> None:
        """The round's model, once, as retained parts; tasks name it by hash. Parts left over
        from a larger model of an earlier round are deleted (an empty retained publish)."""
        rnd = self.round
        sent = 0
        try:
            for part in rnd.model_parts:
                self._send(model_part_topic(sent), part, retain=True)
                rnd.bytes_down += len(part)
                sent += 1
        except PayloadTooLarge as exc:  # a retained part cannot be chunked
            log.error("round %d: model part over the broker's packet limit (%s); lower [coordinator] "
                      "model_part_bytes. This round's tasks carry the params inline.", rnd.ctx.round_id, exc)
            rnd.round_model_sha256, rnd.model_parts = "", ()
        retained = len(rnd.model_parts)
        for index in range(retained, max(sent, self._parts_retained)):  # stale, or sent before the refusal
            self._send(model_part_topic(index), b"", retain=True)
        self._parts_retained = retained

    def _pace(self, device_id: str, reason: str) -> None:
        rnd, cfg = self.round, self.config
        remaining = rnd.machine.deadline - self.clock.now() if rnd is not None else 0.0
        round_id = rnd.ctx.round_id if rnd is not None else self.next_round_id
        delay = pace.retry_after(reason, remaining, idle_s=cfg.pace_idle_s, declined_s=cfg.pace_declined_s,
                                 jitter_s=cfg.pace_jitter_s, max_s=cfg.pace_max_s,
                                 jitter=pace.jitter_fraction(cfg.seed, device_id, round_id))
        self._send(device_topic(device_id, "task"), encode_message(Pace(device_id, delay, reason)))
        self.metrics.pace.labels(reason).inc()

    def _announce(self) -> None:
        rnd = self.round
        note = Announcement(self.manifest.model_id, self.state.version, self.manifest_sha256,
                            rnd.ctx.round_id if rnd else 0, "training" if rnd else "idle", self.session)
        self._send(ANNOUNCE_TOPIC, encode_message(note), retain=True)
        self._announce_due = False

    def _announce_or_defer(self) -> None:
        """Announce now, or, without a link, leave it to tick() or on_reconnect()."""
        try:
            self._announce()
        except (NotConnected, ConnectionLost, PublishRefused) as exc:  # not sent: try again later
            if not self._announce_due:
                log.warning("coordinator: announcement deferred until the link is back: %s", exc)
            self._announce_due = True

    def _send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.transport.publish(topic, payload, qos=1, retain=retain)
        self.metrics.bytes_down.inc(len(payload))

    def _log(self, level: int, key: str, fmt: str, *args) -> None:
        """Log the first ten of a kind, then every power of two: a flood must not flood the log."""
        n = self._logged[key] = self._logged[key] + 1
        if n <= 10 or n & (n - 1) == 0:
            log.log(level, fmt + ("" if n <= 10 else f" [{n} of this kind so far]"), *args)

    # ------------------------------------------------------------------ rounds

    def eligible_devices(self) -> list[str]:
        return [d.device_id for d in self.registry.values() if d.eligible]

    def begin_round(self) -> bool:
        """Sample devices and send tasks; False when too few eligible devices are known."""
        if self.round is not None:
            raise RuntimeError(f"round {self.round.ctx.round_id} is still open; tick() until it closes")
        cfg = self.config
        candidates = self.eligible_devices()
        wanted = min(cfg.clients_per_round, len(candidates))
        quorum = min(cfg.quorum, wanted)
        if wanted == 0:
            return False
        round_id = self.next_round_id
        selected = sample_devices(candidates, selection_size(wanted, cfg.over_selection, len(candidates)), cfg.seed, round_id)
        now, wall = self.clock.now(), self.clock.wall()
        machine = RoundMachine(round_id, tuple(selected), wanted, quorum, now + cfg.round_deadline_s)
        tasks = {d: uuid.uuid4().hex for d in selected}
        if self.store is not None:  # before any task leaves: see store.py
            self.store.open_round(StoredRound(round_id, self.state.version, tuple(selected), tasks, wanted, quorum,
                                              wall, wall + cfg.round_deadline_s))
        self.round = self._new_round(machine, tasks, now)
        (self.round.bytes_up, self.round.bytes_up_dense), self._late_up = self._late_up, (0, 0)
        self._publish_model()  # before the tasks that name it
        for device_id in selected:
            self._send_task(device_id, now)
        self.metrics.round_begun(round_id)
        self._announce()
        log.info("round %d: %d tasks sent (want %d, quorum %d)", round_id, len(selected), wanted, quorum)
        return True

    def tick(self) -> RoundRecord | None:
        """Advance the open round with the clock; commit or abandon it when it is done."""
        if self._announce_due:
            self._announce_or_defer()
        rnd = self.round
        if rnd is None:
            return None
        phase = rnd.machine.on_tick(self.clock.now())
        if phase == Phase.AGGREGATING:
            state = self.strategy.apply(self.state, self._aggregate(rnd))
            robust = advance(self.robust, rnd.accumulator, self.config.robust)
            if robust is not self.robust:
                state = replace(state, extra={**state.extra, EXTRA_KEY: robust.to_extra()})
            record = self._record(rnd, True)
            if self.store is not None:  # the commit point: before it the round is open, after it done
                self.store.commit_round(record.round_id, state, asdict(record), self.clock.wall())
            rnd.machine.committed()
            self.state, self.robust = state, robust
            return self._close(record)
        if phase == Phase.ABANDONED:
            record = self._record(rnd, False)
            if self.store is not None:
                self.store.abandon_round(record.round_id, asdict(record), self.clock.wall())
            return self._close(record)
        return None

    def _aggregate(self, rnd: OpenRound) -> AggregateInput:
        # N = every device the registry knows (restored from the store after a restart), so a
        # resumed round scales SCAFFOLD's control step exactly as the uninterrupted one would.
        return AggregateInput(rnd.accumulator.mean(), rnd.accumulator.count, len(self.registry),
                              rnd.control.mean() if rnd.control.count else None)

    def _record(self, rnd: OpenRound, committed: bool) -> RoundRecord:
        m = rnd.machine
        return RoundRecord(round_id=m.round_id, committed=committed, why=m.why, selected=len(m.selected),
                           reports=len(m.reported), declines=dict(m.declined), bytes_up=rnd.bytes_up,
                           bytes_up_dense=rnd.bytes_up_dense, bytes_down=rnd.bytes_down,
                           seconds=self.clock.now() - rnd.started)

    def _close(self, record: RoundRecord) -> RoundRecord:
        self.history.append(record)
        if self.store is None:
            self._recent.append(self.round.seen)
        self.round = None
        # Round ids never repeat: an abandoned round is retried under the next id, and
        # nothing from it was applied.
        self.next_round_id = record.round_id + 1
        self.metrics.round_closed(record.committed, record.reports, record.seconds, self.state.version)
        # The round is closed (and committed, with a store) whatever the link does now: the
        # caller must get this record, so a dropped link only defers the announcement.
        self._announce_or_defer()
        log.info("round %d %s: %s", record.round_id, "committed" if record.committed else "abandoned", record.why)
        return record

    def _new_round(self, machine: RoundMachine, tasks: dict[str, str], started: float) -> OpenRound:
        ctx = RoundContext(machine.round_id, self.manifest.model_id, self.state.version, tasks, self.shapes,
                           self.config.norm_bound, self.strategy.uses_control, self.config.control_norm_bound)
        plan = self.strategy.configure(self.state)
        correction = encode_dense(plan.correction) if plan.correction is not None else b""
        params = encode_dense(self.state.params)
        sha, parts = "", ()
        if self.config.model_part_bytes:
            model = RoundModel(ctx.model_id, ctx.model_version, ctx.round_id, params, correction)
            sha, split = split_round_model(model, self.config.model_part_bytes)
            parts = tuple(encode_message(p) for p in split)
        # Bucketing draws from (seed, round): a resumed round replays into the same buckets.
        rng = np.random.default_rng([self.config.seed, machine.round_id])
        aggregator = make_aggregator(self.config.aggregator, self.config.robust, self.robust, rng)
        return OpenRound(machine, ctx, aggregator, started, params, plan.hyper, correction,
                         round_model_sha256=sha, model_parts=parts)

    # ------------------------------------------------------------------ restart

    def _load(self, store: RoundStore) -> None:
        store.bind(self.manifest.model_id, self.strategy.name)
        loaded = store.load_state()
        if loaded is None:
            store.save_initial_state(self.state)
        else:
            got = {k: tuple(v.shape) for k, v in loaded.params.items()}
            if got != self.shapes:
                raise ConfigError(f"{store.path}: stored params {got} do not fit the model's shared params "
                                  f"{self.shapes}")
            self.state = loaded
            self.robust = RobustState.from_extra(loaded.extra.get(EXTRA_KEY))
        self.next_round_id = store.next_round_id()
        now, wall = self.clock.now(), self.clock.wall()
        for d in store.load_devices():
            self.registry[d.device_id] = DeviceRecord(d.device_id, now - max(0.0, wall - d.last_seen_wall), d.eligible,
                                                      d.reason, d.num_examples)
        stored = store.load_open_round()
        if stored is not None:
            if stored.model_version != self.state.version:
                raise ConfigError(f"{store.path}: open round {stored.round_id} was based on version "
                                  f"{stored.model_version}, the stored model is {self.state.version}")
            self.round = resume(stored, now, wall, self._new_round)
            m = self.round.machine
            log.info("round %d resumed: %d reports, %d declines, %.0f s left", stored.round_id, len(m.reported),
                     len(m.declined), m.deadline - now)


def _stale(report) -> UpdateRejected:
    return StaleRound(f"round {report.round_id} from {report.device_id} is not open")
