"""The coordinator loop: registry, rounds, validation and aggregation over a Transport.

This is the one place on the coordinator side that touches the transport and the clock.
The same class runs over the in-memory broker in simulation and over MQTT in deployment.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.clock import SystemClock
from edge_runtime.codec import encode_message
from edge_runtime.manifest import Manifest
from edge_runtime.protocol import Ack, CheckIn, Decline, TrainTask, Update, all_devices_topic, device_topic
from edge_runtime.transport.base import Transport
from edge_runtime.update_codec import encode_dense

from .aggregate import WeightedMean
from .config import CoordinatorConfig
from .errors import StaleRound, UpdateRejected
from .rounds import Phase, RoundMachine
from .sampling import sample_devices, selection_size
from .strategies import ServerState, Strategy
from .validation import RoundContext, check_contents, check_current, check_not_seen, decode_report, payload_digest, update_key

log = logging.getLogger("fedge.coordinator")


@dataclass
class DeviceRecord:
    device_id: str
    last_seen: float
    eligible: bool = True
    reason: str = ""
    num_examples: int = 0


@dataclass
class RoundRecord:
    round_id: int
    committed: bool
    why: str
    selected: int
    reports: int
    declines: dict[str, str]
    bytes_up: int
    bytes_up_dense: int
    bytes_down: int
    seconds: float


@dataclass
class OpenRound:
    machine: RoundMachine
    ctx: RoundContext
    accumulator: WeightedMean
    started: float
    bytes_up: int = 0
    bytes_up_dense: int = 0
    bytes_down: int = 0
    seen: dict = field(default_factory=dict)  # (device, round, update_id) -> payload sha256


class Coordinator:
    def __init__(
        self,
        transport: Transport,
        strategy: Strategy,
        manifest: Manifest,
        initial_shared: dict[str, np.ndarray],
        config: CoordinatorConfig,
        clock=None,
    ):
        self.transport = transport
        self.strategy = strategy
        self.manifest = manifest
        self.config = config
        self.clock = clock or SystemClock()
        self.state: ServerState = strategy.init(initial_shared)
        self.registry: dict[str, DeviceRecord] = {}
        self.round: OpenRound | None = None
        self.next_round_id = 1
        self.history: list[RoundRecord] = []
        self.rejections: Counter[str] = Counter()
        self.declines: Counter[str] = Counter()
        self.shapes = {p.name: p.shape for p in manifest.by_role("shared")}

    def start(self) -> None:
        for channel in ("checkin", "update", "status"):
            self.transport.subscribe(all_devices_topic(channel))

    # ------------------------------------------------------------------ inbound

    def pump(self, timeout: float | None = 0.0) -> bool:
        """Handle at most one inbound message; True if one was handled."""
        msg = self.transport.receive(timeout)
        if msg is None:
            return False
        parts = msg.topic.split("/")
        sender = parts[3] if len(parts) == 5 else None
        channel = parts[-1]
        try:
            report = decode_report(msg.payload, self.config.max_update_bytes)
        except UpdateRejected as exc:
            self._reject(exc, sender, None)
            return True
        if isinstance(report, CheckIn) and channel == "checkin" and report.device_id == sender:
            self._check_in(report)
        elif isinstance(report, (Update, Decline)) and channel == "update":
            self._report(report, sender, len(msg.payload))
        else:
            log.warning("ignored %s on %s", type(report).__name__, msg.topic)
        return True

    def _check_in(self, msg: CheckIn) -> None:
        self.registry[msg.device_id] = DeviceRecord(msg.device_id, self.clock.now(), msg.eligible, msg.reason, msg.num_examples)

    def _report(self, report: Update | Decline, sender: str | None, size: int) -> None:
        rnd = self.round
        if sender in self.registry:
            self.registry[sender].last_seen = self.clock.now()
        if rnd is not None and isinstance(report, Update):
            # Everything that crossed the uplink counts, accepted or not.
            rnd.bytes_up += size
            rnd.bytes_up_dense += size - len(report.payload) + report.dense_bytes
        try:
            if rnd is None:
                raise _stale(report)
            check_current(report, rnd.ctx, sender)
            if isinstance(report, Decline):
                self.declines[report.reason] += 1
                log.info("round %d: %s declined: %s", rnd.ctx.round_id, report.device_id, report.reason)
                rnd.machine.on_decline(report.device_id, report.reason)
                return
            check_not_seen(report, rnd.seen)
            if not rnd.machine.expects(report.device_id):
                raise _stale(report)
            delta = check_contents(report, rnd.ctx)
        except UpdateRejected as exc:
            self._reject(exc, sender, report)
            return
        rnd.accumulator.add(delta, float(report.num_examples))
        rnd.seen[update_key(report)] = payload_digest(report)
        rnd.machine.on_report(report.device_id)
        self._ack(report, True, "")

    def _reject(self, exc: UpdateRejected, sender: str | None, report) -> None:
        self.rejections[exc.reason] += 1
        # Late reports from over-selected devices are expected after a round closes early.
        level = logging.INFO if exc.reason == "stale_round" else logging.WARNING
        log.log(level, "rejected message from %s: %s (%s)", sender or "?", exc.reason, exc)
        if isinstance(report, Update) and sender == report.device_id:
            # A duplicate was counted before: ack it as accepted so the device stops resending.
            self._ack(report, exc.reason == "duplicate", exc.reason)

    def _ack(self, update: Update, accepted: bool, reason: str) -> None:
        ack = encode_message(Ack(update.device_id, update.round_id, update.task_id, update.update_id, accepted, reason))
        if self.round is not None:
            self.round.bytes_down += len(ack)
        self.transport.publish(device_topic(update.device_id, "ack"), ack, qos=1)

    # ------------------------------------------------------------------ rounds

    def eligible_devices(self) -> list[str]:
        return [d.device_id for d in self.registry.values() if d.eligible]

    def begin_round(self) -> bool:
        """Sample devices and send tasks; False when too few eligible devices are known."""
        cfg = self.config
        candidates = self.eligible_devices()
        wanted = min(cfg.clients_per_round, len(candidates))
        quorum = min(cfg.quorum, wanted)
        if wanted == 0:
            return False
        round_id = self.next_round_id
        selected = sample_devices(candidates, selection_size(wanted, cfg.over_selection, len(candidates)), cfg.seed, round_id)
        now = self.clock.now()
        machine = RoundMachine(round_id, tuple(selected), wanted, quorum, now + cfg.round_deadline_s)
        tasks = {d: uuid.uuid4().hex for d in selected}
        ctx = RoundContext(round_id, self.manifest.model_id, self.state.version, tasks, self.shapes, cfg.norm_bound)
        self.round = OpenRound(machine, ctx, WeightedMean(), now)
        params_bytes = encode_dense(self.state.params)
        hyper = self.strategy.configure(self.state)
        for device_id in selected:
            task = TrainTask(
                round_id=round_id,
                task_id=tasks[device_id],
                device_id=device_id,
                model_id=self.manifest.model_id,
                model_version=self.state.version,
                params=params_bytes,
                hyper=hyper,
                compression=cfg.compression,
                deadline_s=cfg.round_deadline_s,
                seed=cfg.seed * 1_000_003 + round_id,
            )
            payload = encode_message(task)
            self.round.bytes_down += len(payload)
            self.transport.publish(device_topic(device_id, "task"), payload, qos=1)
        log.info("round %d: %d tasks sent (want %d, quorum %d)", round_id, len(selected), wanted, quorum)
        return True

    def tick(self) -> RoundRecord | None:
        """Advance the open round with the clock; commit or abandon it when it is done."""
        rnd = self.round
        if rnd is None:
            return None
        phase = rnd.machine.on_tick(self.clock.now())
        if phase == Phase.AGGREGATING:
            self.state = self.strategy.apply(self.state, rnd.accumulator.mean())
            rnd.machine.committed()
            return self._close(True)
        if phase == Phase.ABANDONED:
            return self._close(False)
        return None

    def _close(self, committed: bool) -> RoundRecord:
        rnd = self.round
        assert rnd is not None
        m = rnd.machine
        record = RoundRecord(
            round_id=m.round_id,
            committed=committed,
            why=m.why,
            selected=len(m.selected),
            reports=len(m.reported),
            declines=dict(m.declined),
            bytes_up=rnd.bytes_up,
            bytes_up_dense=rnd.bytes_up_dense,
            bytes_down=rnd.bytes_down,
            seconds=self.clock.now() - rnd.started,
        )
        self.history.append(record)
        self.round = None
        # Round ids never repeat: an abandoned round is retried under the next id, and
        # nothing from it was applied.
        self.next_round_id += 1
        log.info("round %d %s: %s", m.round_id, "committed" if committed else "abandoned", m.why)
        return record


def _stale(report) -> UpdateRejected:
    return StaleRound(f"round {report.round_id} from {report.device_id} is not open")
