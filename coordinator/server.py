"""The coordinator loop: routes inbound messages and executes the round machine's actions.

The one coordinator-side place that touches the transport and the clock (in-memory broker or
MQTT). Each concern has its module: round transition table (rounds), plain or secure rounds
(round_shell, secagg/), admission (admission, validation), aggregate, registry, sidelined,
outbound, store / memory_store, restart, dp/budget, pace, metrics.

Every step is written to the Store before the message that depends on it leaves: the round
before its tasks, an update before its Ack, the new model before the round counts as
committed. store.py argues why a `kill -9` between any two steps is safe."""

from __future__ import annotations

import logging
import uuid
from collections import Counter, deque
from dataclasses import asdict, replace

import numpy as np

from fedge.edge_runtime.kernel.clock import SystemClock
from fedge.edge_runtime.kernel.flood import FloodLog
from fedge.edge_runtime.kernel.manifest import Manifest
from fedge.edge_runtime.kernel.protocol import (
    CheckIn,
    Decline,
    EvalReport,
    FetchRequest,
    Status,
    Update,
    device_of,
)
from fedge.edge_runtime.kernel.transport.base import Transport

from . import backoff, pace
from .admission import Accepted, admit, check_decline, view_of
from .artifacts import FetchRefused, open_artifacts
from .config import CoordinatorConfig
from .dp.budget import PrivacyBudget
from .errors import UnexpectedMessage, UpdateRejected
from .evaluation import Evaluations, evaluation_run
from .fetches import serve_fetch
from .group_commit import GroupCommit
from .guard import commit_fault
from .holdout import open_holdout
from .left_out import LeftOut
from .link import BrokerLink
from .memory_store import MemoryStore
from .metrics import CoordinatorMetrics, EvalMetrics, tally_key
from .noise_round import NoiseRounds
from .outbound import Outbound
from .records import OpenRound, RoundRecord, count_uplink, open_round
from .registry import Registry
from .registry_cap import check_in_gate
from .restart import abandon_unplanned, restore_state, resume
from .round_shell import make_shell
from .rounds import (
    Abandon,
    Action,
    Aggregate,
    Commit,
    Committed,
    Declined,
    Event,
    Pace,
    RoundMachine,
    Send,
    Stopped,
    Tick,
    on_event,
    start,
)
from .sampling import poisson_sample, sample_devices, selection_size
from .sidelined import Sidelined
from .store import Store, StoredDecline, StoredRound, StoredUpdate
from .strategies import ServerState, Strategy
from .update_fits import check_update_fits
from .validation import decode_inbound

log = logging.getLogger("fedge.coordinator")

_QUIET = ("stale_round", "duplicate")  # expected after early closes and re-publishes: INFO, not WARNING
HISTORY_KEPT = 1024  # the latest RoundRecords in memory: a service runs for months (the store: keep_rounds)


class Coordinator(BrokerLink, NoiseRounds):
    """One coordinator: `start()` once, then loop `pump()` (one inbound message each) and
    `tick()` (closes the round at its deadline or when it is done), and call `begin_round()`
    whenever no round is open. Every method returns quickly; the caller owns sleeping.
    Public state for simulators and reports: `state` (ServerState), `round` (OpenRound or None),
    `history` (this process's latest HISTORY_KEPT RoundRecords), `rejections` and `declines` (Counters
    by reason, as exported), `registry` (device_id -> DeviceRecord), `privacy`. async_mode/server.py subclasses it."""

    # True where updates are counted outside the round machine (sharding/leader.py: by workers), so
    # the record's `reports` is what the aggregate holds, not the replies the machine saw.
    reports_from_aggregate = False

    def __init__(self, transport: Transport, strategy: Strategy, manifest: Manifest,
                 initial_shared: dict[str, np.ndarray], config: CoordinatorConfig, clock=None,
                 store: Store | None = None, metrics: CoordinatorMetrics | None = None):
        """State (model, strategy state, open round, registry) is loaded from the store and an
        interrupted round resumes; `initial_shared` only seeds a fresh store. No store: a
        MemoryStore, which starts fresh."""
        self.strategy = strategy
        self.manifest = manifest
        self.config = config
        self.clock = clock or SystemClock()
        self.store = GroupCommit(store if store is not None else MemoryStore(keep_rounds=config.keep_rounds))  # bursts
        self.metrics = metrics or CoordinatorMetrics()
        self.metrics.watch_transport(transport)
        self.artifacts = open_artifacts(config, manifest.model_id)
        self.holdout = open_holdout(config, manifest)  # the model guard's guard-set check, or None
        self.manifest_sha256 = self.artifacts.manifest_sha256 if self.artifacts else ""
        self.outbound = Outbound(transport, self.metrics, config, manifest.model_id, self.manifest_sha256,
                                 uuid.uuid4().hex)
        self.outbound.defer = self.store.defer  # an Ack never overtakes its update's store write
        self.shapes = {p.name: p.shape for p in manifest.by_role("shared")}
        self.dense_limit = 8 * sum(int(np.prod(s)) for s in self.shapes.values())  # params + control, fp32
        check_update_fits(config, self.shapes, strategy.uses_control, manifest.model_id)  # else refused unread
        self.registry = Registry(self.store)
        self.checkins = check_in_gate(config, self.registry, self.metrics)  # max_devices, then each device's rate
        self.sidelined = Sidelined()  # secure-round offenders (wrong shares, bad signature), left out a while
        self.privacy = PrivacyBudget(config.privacy, self.store, self.metrics.registry)  # off unless enabled
        self.shell = make_shell(config, self.outbound, self.shapes, self.store)  # plain or secure (round_shell.py)
        self.evaluations = Evaluations(evaluation_run(config), self.outbound, self.store,  # none under privacy
                                       EvalMetrics(self.metrics.registry), manifest.model_id, config.seed,
                                       config.max_examples)
        self._late_up = (0, 0)  # (bytes, dense bytes) of Updates that came while no round was open
        self.history: deque[RoundRecord] = deque(maxlen=HISTORY_KEPT)
        self.rejections: Counter[str] = Counter()
        self.declines: Counter[str] = Counter()
        self.left_out = LeftOut()  # device id -> updates the aggregates left out, by kind (this process)
        self.decline_details: dict[str, str] = {}  # reason -> the latest detail a device gave (bounded)
        self._flood = FloodLog(log)  # rejections: the first ten of a kind, then every power of two
        self.state: ServerState = restore_state(self.store, manifest.model_id, strategy.name,
                                                strategy.init(initial_shared), self.shapes)
        self.next_round_id = self.store.next_round_id()
        now, wall = self.clock.now(), self.clock.wall()
        self.registry.restore(now, wall)
        self.round: OpenRound | None = None
        self._resume(now, wall)
        self.metrics.model_version.set(self.state.version)
        self.metrics.devices(len(self.registry), self.registry.eligible)

    def _resume(self, now: float, wall: float) -> None:
        """The store's open round, rebuilt by replay (restart.py)."""
        if (stored := self.store.load_open_round()) is None:
            return
        # ConfigError: its plan no longer fits the budget as configured; abandoned: opened with privacy off
        if abandon_unplanned(self, stored) or self._noise_resumed(stored):  # noise-only, stopped mid-way: run again
            return
        self.round = resume(stored, self.state.version, now, wall, self._new_round, self.store.path,
                            self.config.shards)  # logs what it resumed
        # keys and masked inputs died with the process; a distributed-DP round resumed plain would expose updates
        if self.shell.secure or self.round.privacy is not None and self.round.privacy.mechanism == "distributed":
            self._execute(Stopped("a secure round cannot resume after a restart"), now)

    # ------------------------------------------------------------------ inbound

    def pump(self, timeout: float | None = 0.0) -> bool:
        """Handle at most one inbound message; True if one was handled."""
        msg = self.transport.receive(timeout)
        if msg is None:
            return False
        self.metrics.bytes_up.inc(len(msg.payload))
        sender, channel = device_of(msg.topic) or (None, "")
        try:
            report = decode_inbound(msg, self.config.max_update_bytes)
        except UpdateRejected as exc:
            self._reject(exc, sender, None)
            return True
        mine = getattr(report, "device_id", None) == sender
        if isinstance(report, CheckIn) and channel == "checkin" and mine:
            if (refused := self.checkins.refusal(sender, self.clock.now())) is None:
                self._check_in(report)
            else:  # no store write, no reply (registry_cap.py, checkin_limit.py)
                self._reject(refused, sender, None)
        elif isinstance(report, Decline if self.shell.secure else (Update, Decline)) and channel == "update":
            self._report(report, sender, len(msg.payload))
        elif self.shell.owns(report, channel):
            if (rejected := self.shell.admit(self.round, report, sender, len(msg.payload))) is not None:
                self._reject(self.sidelined.after_refusal(rejected, sender, self.clock.now()), sender, None)
        elif isinstance(report, EvalReport) and channel == "update":
            rejected = self.evaluations.on_report(report, sender, len(msg.payload), self.clock.now())
            if rejected is not None:
                self._reject(rejected, sender, None)
        elif isinstance(report, FetchRequest) and channel == "fetch" and mine:
            self._fetch(report)
        elif isinstance(report, Status) and channel == "status" and mine:
            if not report.online and report.device_id in self.registry:
                self._register(report.device_id, False, "offline", self.registry[report.device_id].num_examples)
        else:  # counted like any refusal, so a device talking on the wrong channel shows in the metrics
            self._reject(UnexpectedMessage(f"{type(report).__name__} on {msg.topic}"), sender, None)
        return True

    def _check_in(self, msg: CheckIn) -> None:
        self._register(msg.device_id, msg.eligible, msg.reason, msg.num_examples, backoff.fingerprint(msg))
        # a parked device is paced like an ineligible one
        eligible = msg.eligible and not self.registry[msg.device_id].parked
        reason = pace.reason_for(self.round.machine if self.round else None, msg.device_id, eligible)
        if reason is None:  # selected but silent: its task was probably lost
            self.shell.resend(self.round, msg.device_id, self.clock.now())
        else:
            self._pace(msg.device_id, reason)

    def _register(self, device_id: str, eligible: bool, reason: str, num_examples: int,
                  checkin: str | None = None) -> None:
        self.registry.register(device_id, eligible, reason, num_examples, self.clock.now(), self.clock.wall(), checkin)
        self.metrics.devices(len(self.registry), self.registry.eligible)

    def _report(self, report: Update | Decline, sender: str | None, size: int) -> None:
        rnd = self.round
        self.registry.seen(sender, self.clock.now())
        if isinstance(report, Update):
            self._late_up = count_uplink(rnd, self._late_up, report, size, self.dense_limit)
        view = view_of(rnd, self.store.counted_digest)
        if isinstance(report, Decline):
            rejected = check_decline(report, sender, view)
            if rejected is None:
                self._decline(report)
                return
        else:
            verdict = admit(report, sender, view)
            if isinstance(verdict, Accepted):
                self._accept(report, verdict)
                return
            rejected = verdict
        self._reject(rejected.error, sender, report)

    def _accept(self, update: Update, accepted: Accepted) -> None:
        rnd = self.round  # the update is durable before the Ack: see store.py
        self.store.add_update(rnd.ctx.round_id, StoredUpdate(rnd.events, update.device_id, update.update_id,
                                                             accepted.digest, update.num_examples, update.payload,
                                                             update.control, accepted.reported_norm))
        rnd.events += 1
        rnd.add(accepted)
        self.metrics.update_accepted(update.device_id, update.num_examples, rnd.ctx.max_examples, rnd.ctx.equal_weights)
        self.outbound.ack(rnd, update, True, "")  # held until the update is stored (group_commit.py)

    def _decline(self, decline: Decline) -> None:
        rnd = self.round
        rnd.decline_from.add(decline.device_id)  # counted once per device and round (check_decline)
        self.declines[tally_key(self.declines, decline.reason)] += 1
        if backoff.is_permanent(decline.reason):
            self.registry.park(decline.device_id, decline.reason)
        self.decline_details[tally_key(self.decline_details, decline.reason)] = detail = decline.detail[:300]
        self.metrics.declined(decline.reason)  # the detail says why (a neighbour its directory lacks): hostile, so %r
        log.info("round %d: %s declined: %s (%r)", rnd.ctx.round_id, decline.device_id, decline.reason, detail)
        if rnd.machine.expects(decline.device_id):
            self.store.add_decline(rnd.ctx.round_id, StoredDecline(rnd.events, decline.device_id, decline.reason))
            rnd.events += 1
        self._execute(Declined(decline.device_id, decline.reason), self.clock.now())

    def _fetch(self, request: FetchRequest) -> None:
        if (refused := serve_fetch(request, self.round, self.artifacts, self.outbound, self.metrics,
                                   self.clock.now(), self.shell.secure)) is not None:
            self._reject(refused, request.device_id, None)

    def _reject(self, exc: UpdateRejected | FetchRefused, sender: str | None, report) -> None:
        self.rejections[exc.reason] += 1
        self.metrics.rejected(exc.reason)
        level = logging.INFO if exc.reason in _QUIET else logging.WARNING
        self._flood(level, exc.reason, "rejected message from %s: %s (%s)", sender or "?", exc.reason, exc)
        if isinstance(report, Update) and sender == report.device_id:
            # A duplicate was counted before: ack it as accepted so the device stops resending.
            self.outbound.ack(self.round, report, exc.reason == "duplicate", exc.reason)

    def _pace(self, device_id: str, reason: str, cause: str = "") -> None:
        """cause: the device's own reason (a decline's), else the one its last check-in gave."""
        record, rnd = self.registry.get(device_id), self.round
        self.outbound.pace(rnd, device_id, reason, rnd.ctx.round_id if rnd is not None else self.next_round_id,
                           self.clock.now(), cause or (record.reason if record is not None else ""))

    # ------------------------------------------------------------------ rounds

    def eligible_devices(self, selectable: bool = True) -> list[str]:
        devices = self.sidelined.keep(self.registry.eligible_devices(), self.clock.now())
        return self.shell.selectable(devices) if selectable else devices  # evaluation tasks need no identity

    def begin_round(self) -> bool:
        """Sample devices and send tasks; False: too few eligible devices (a secure round: fewer than
        its quorum), or privacy.exhausted."""
        if self.round is not None:
            raise RuntimeError(f"round {self.round.ctx.round_id} is still open; tick() until it closes")
        cfg, candidates = self.config, self.eligible_devices()
        wanted, quorum = min(cfg.clients_per_round, len(candidates)), min(cfg.quorum, len(candidates))
        if wanted == 0:
            return False
        if self.shell.secure and quorum < cfg.quorum:
            # A secure round's quorum is what makes the revealed sum a sum of several updates
            # (secagg_quorum): capped to fewer eligible devices, it would unmask one device's.
            return False
        round_id, asked = self.next_round_id, selection_size(wanted, cfg.over_selection, len(candidates))
        plan = self.privacy.plan(round_id, len(candidates), asked, wanted, self.state.extra)  # before the round
        if plan is None and self.privacy.enabled:
            return False
        if plan is not None and plan.sampling == "poisson":  # central DP, no secure aggregation (dp/config.py)
            selected = poisson_sample(candidates, asked / len(candidates), cfg.seed, round_id, plan.noise_key)
            if not selected:  # not drawn again: the round releases the noise alone (noise_round.py)
                return self._noise_round(round_id, plan)
            # Every device drawn counts (the target is the draw, the quorum capped by it): a round
            # that closed at a fixed count would let one added device push out another's report,
            # moving the sum by 2S, not the S the Poisson charge assumes. The mean still divides
            # by the fixed W; the round is charged however it ends (records.py).
            wanted, quorum = len(selected), min(quorum, len(selected))
        else:
            selected = sample_devices(candidates, asked, cfg.seed, round_id, plan.noise_key if plan else "")
        now, wall = self.clock.now(), self.clock.wall()
        stages, limits = self.shell.plan(wanted, quorum)
        machine, actions = start(round_id, stages, limits, tuple(selected), now, deadline=now + cfg.round_deadline_s)
        tasks = {d: uuid.uuid4().hex for d in selected}  # the round is stored before any task leaves: store.py
        self.store.open_round(StoredRound(round_id, self.state.version, tuple(selected), tasks, wanted, quorum,
                                          wall, wall + cfg.round_deadline_s, privacy=plan and plan.to_json(),
                                          shards=self._round_shards(tuple(selected))))
        self.round = self._new_round(machine, tasks, now, plan)
        (self.round.bytes_up, self.round.bytes_up_dense), self._late_up = self._late_up, (0, 0)
        self.outbound.model(self.round)  # before the tasks that name it
        self._run(actions, now)
        self.metrics.round_begun(round_id)
        self.outbound.announce(self.state.version, self.round)
        log.info("round %d: %d tasks sent (want %d, quorum %d)", round_id, len(selected), wanted, quorum)
        return True

    def tick(self) -> RoundRecord | None:
        """Advance the open round with the clock; commit or abandon it when it is done."""
        if self.outbound.announce_due:
            self.outbound.announce_or_defer(self.state.version, self.round)
        self.evaluations.tick(now := self.clock.now())
        return self._noise_record() if self.round is None else self._execute(Tick(now), now)

    def _execute(self, event: Event, now: float) -> RoundRecord | None:
        """Feed one event to the round machine and run the actions it returns."""
        self.round.machine, actions = on_event(self.round.machine, event)
        return self._run(actions, now)

    def _run(self, actions: list[Action], now: float) -> RoundRecord | None:
        rnd, state = self.round, None
        for action in actions:
            if isinstance(action, Send):
                if (why := self.shell.send(rnd, action.stage, action.devices, now)) is not None:
                    return self._execute(Stopped(why), now)  # the shell refused the stage (sharding/secure.py)
            elif isinstance(action, Pace):
                self._pace(action.device_id, action.reason, action.cause)
            elif isinstance(action, Aggregate):
                # N = every device the registry knows (restored from the store after a restart), so a
                # resumed round scales SCAFFOLD's control step exactly as the uninterrupted one would.
                reduced = self.shell.aggregate_input(rnd, len(self.registry))
                for device_id, why in self.sidelined.after_secure_sum(self.shell, now):  # wrong shares
                    self._reject(why, device_id, None)
                if isinstance(reduced, str):  # a secure round that cannot be unmasked
                    return self._execute(Stopped(reduced), now)
                state = self.strategy.apply(self.state, reduced)
                self.left_out.note(rnd.ctx.round_id, rnd.aggregator, self.metrics)
                carry = getattr(rnd.aggregator, "carry", None)  # what it learned, committed with the model
                if carry is not None:
                    state = replace(state, extra={**state.extra, **carry()})
            elif isinstance(action, Commit):
                fault = commit_fault(self.state, state, self.holdout)
                if fault is not None:  # the model stays as it was; the Abandon that follows closes the round
                    log.error("round %d: the new model is refused, the round abandoned: %s", rnd.ctx.round_id, fault)
                    return self._execute(Stopped(fault), now)
                counted = reduced.participants if self.shell.secure or self.reports_from_aggregate else None
                record = rnd.record(True, self.clock.now(), counted)
                # the commit point: before it the round is open, after it done
                self.store.commit_round(record.round_id, state, asdict(record), self.clock.wall(), rnd.charge())
                rnd.machine, _ = on_event(rnd.machine, Committed())
                self.state = state
                return self._close(record)
            elif isinstance(action, Abandon):
                record = rnd.record(False, self.clock.now())
                self.store.abandon_round(record.round_id, asdict(record), self.clock.wall(), rnd.charge())
                return self._close(record)
        return None

    def _close(self, record: RoundRecord) -> RoundRecord:
        self.history.append(record)
        self.round = None
        self.privacy.refresh()
        self.next_round_id = record.round_id + 1  # ids never repeat: an abandoned round (nothing applied) retries anew
        self.metrics.round_closed(record.committed, record.reports, record.seconds, self.state.version,
                                  record.train_loss)
        # The round is closed (and committed) whatever the link does now: the caller must get
        # this record, so a dropped link only defers the announcement.
        self.outbound.announce_or_defer(self.state.version, self.round)
        log.info("round %d %s: %s; mean train loss %s", record.round_id, "committed" if record.committed else
                 "abandoned", record.why, "none released" if record.train_loss is None else f"{record.train_loss:.4g}")
        if record.committed:  # the new model, scored by a sample of devices on their own held-out data
            self.evaluations.after_commit(record.round_id, self.state.version, self.state.params,
                                          self.eligible_devices(selectable=False), self.clock.now())
        return record

    def _round_shards(self, selected: tuple[str, ...]) -> dict[str, int] | None:
        """The shard of each selected device, stored with the round; None: no shards (sharding/leader.py)."""
        return None

    def _new_round(self, machine: RoundMachine, tasks: dict[str, str], started: float, plan=None) -> OpenRound:
        guard_loss = self.holdout.delta_loss(self.state.params) if self.holdout is not None else None
        return open_round(machine, tasks, started, state=self.state, strategy=self.strategy,
                          model_id=self.manifest.model_id, shapes=self.shapes, config=self.config, privacy=plan,
                          guard_loss=guard_loss)
