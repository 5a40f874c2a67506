"""AsyncCoordinator: FedBuff's shell around the buffer's transition table (machine.py).

It is the sync Coordinator (server.py) with the round's parts replaced: the same inbound
routing, decoding, registry, evaluation, privacy budget, metrics and publishing; updates are
admitted against the task in flight (admission.py), weighted by staleness (staleness.py),
made durable in the journal before their Ack (journal.py), and every K of them step the
server optimizer once, committing a new model version.

`round` is the open buffer, an OpenRound (records.py) whose round id is the buffer id and
whose aggregator is the configured one ([coordinator] aggregator, or DP's DpMean): each
delta enters it scaled by f(s), with its FedAvg weight. A buffer is a round in the Store,
so a flush is commit_round: model, record and privacy charge in one transaction (one
accounting event per flush with central DP). The next buffer opens at once, so updates
keep flowing; an update that finds no buffer open (the privacy budget refused the next
one) is not acked, and its device resends it later.
"""

from __future__ import annotations

import math
import uuid
from collections import Counter
from dataclasses import asdict, replace

from prometheus_client import Gauge, Histogram

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import Decline, Update, all_devices_topic

from .. import backoff, pace
from ..admission import Accepted, check_stored_digest
from ..aggregate import UpdateMeta
from ..dp.round import RoundPlan
from ..errors import StaleRound, StaleUpdate, UpdateRejected
from ..guard import commit_fault
from ..metrics import tally_key
from ..records import OpenRound, count_uplink
from ..restart import abandon_unplanned
from ..rounds import SYNC, Limits, RoundMachine
from ..sampling import sample_devices
from ..server import Coordinator, log
from ..store import StoredRound
from ..validation import decode_delta
from ..weights import update_weight
from .admission import check_key, check_update
from .journal import BufferedRow, TaskRow, open_journal
from .machine import (
    Arrived,
    AsyncMachine,
    Buffered,
    CheckedIn,
    Dispatch,
    Dispatched,
    Dropped,
    Expire,
    Flight,
    Flush,
    Flushed,
    Reject,
    Tick,
    on_event,
)
from .rebuild import rebuild_flights
from .staleness import STALENESS_BUCKETS, scale, staleness_weight
from .waiting import why_waiting


class AsyncCoordinator(Coordinator):
    """Drive it like a Coordinator: start(), then pump() and tick(); begin_round() opens the
    first buffer (the loop calls it when no buffer is open). tick() dispatches tasks up to
    [coordinator.async] concurrency and returns a RoundRecord after each flush."""

    def __init__(self, *args, **kwargs):
        self._flushed = []  # records of flushes since the last tick()
        self._waiting_logged = -1  # the buffer whose wait was last explained (_say_why_waiting)
        self._rest: dict[str, float] = {}  # device -> clock seconds before which it gets no task
        self._silent: set[str] = set()  # let a task expire, not heard from since: no new task until it is
        self._draws = 0
        self._contributions: Counter[str] = Counter()  # device -> its updates in the open buffer
        self.stop_after = None  # the loop's should_stop(record): True, and no buffer opens after that flush
        super().__init__(*args, **kwargs)
        r = self.metrics.registry
        self.staleness_seen = Histogram("fedge_async_staleness", "Staleness (versions) of accepted updates",
                                        buckets=STALENESS_BUCKETS, registry=r)
        self.in_flight = Gauge("fedge_async_in_flight", "Tasks in flight", registry=r)
        self.buffered = Gauge("fedge_async_buffered", "Accepted updates in the open buffer", registry=r)

    # ------------------------------------------------------------------ restart

    def _resume(self, now: float, wall: float) -> None:
        """The machine from the journal's tasks, and the open buffer replayed from its rows."""
        a, self.journal = self.config.async_, open_journal(self.store)
        machine = AsyncMachine(self.state.version, a.buffer_size, a.concurrency, a.max_staleness)
        self.machine = rebuild_flights(machine, self.journal, self.registry, now, wall, self.config.round_deadline_s)
        if (stored := self.store.load_open_round()) is None:
            return
        # A sync round's row (a buffer selects no one): its updates would be dropped; or a sync
        # noise-only round's (no one selected either, target 0: noise_round.py), which would open a buffer of K.
        if stored.selected or stored.target == 0:
            raise ConfigError(f"{self.store.path}: round {stored.round_id} is an open sync round; finish it with "
                              "mode = 'sync' before switching to async")
        if stored.model_version != self.state.version:
            raise ConfigError(f"{self.store.path}: open buffer {stored.round_id} was based on version "
                              f"{stored.model_version}, the stored model is {self.state.version}")
        if abandon_unplanned(self, stored, self.journal):  # check_open's ConfigError, or opened with privacy off
            return
        self.round = self._new_buffer(stored.round_id, now - max(0.0, wall - stored.started_wall),
                                      RoundPlan.from_json(stored.privacy))
        rows = self.journal.buffered(stored.round_id)
        self._contributions = Counter(row.device_id for row in rows)
        for row in rows:
            check_stored_digest(row.payload, b"", row.digest, f"{row.update_id} from {row.device_id} "
                                f"(buffer {stored.round_id})")
            self._add(Accepted(row.device_id, row.update_id, row.num_examples, row.digest,
                               decode_delta(row.payload, self.round.ctx.shapes), None,
                               reported_norm=row.reported_norm), row.staleness)
        self.round.events = rows[-1].seq + 1 if rows else 0
        # It flushes at the K it opened with (its target; a changed buffer_size applies from the next
        # buffer): a DP buffer's mean divides by that K (its plan's W), whatever buffer_size says now.
        self.machine = replace(self.machine, buffered=len(rows), buffer_size=stored.target)
        log.info("buffer %d resumed: %d of %d updates, %d tasks in flight", stored.round_id, len(rows),
                 stored.target, self.machine.in_flight)

    def _new_buffer(self, buffer_id: int, started: float, plan: RoundPlan | None) -> OpenRound:
        # The sync machine only carries the buffer's id for OpenRound; async never feeds it events.
        # Its deadline is the start: paces count from now, not from a round's end.
        machine = RoundMachine(buffer_id, SYNC, (Limits(self.config.async_.buffer_size, 1, 1.0),), (), started)
        return self._new_round(machine, {}, started, plan)

    # ------------------------------------------------------------------ links

    def start(self) -> None:
        for channel in ("checkin", "update", "status", "fetch"):
            self.transport.subscribe(all_devices_topic(channel))
        self.on_reconnect()  # the tasks in flight and the announcement (a resumed buffer has no task_sent yet)

    def on_reconnect(self) -> None:
        if self.round is not None:
            self.round.task_sent.clear()
        self._resend_tasks()
        self.outbound.announce(self.state.version, self.round)

    def _resend_tasks(self) -> None:
        """Tasks in flight on the current version (older params are no longer at hand: a device that lost
        such a task lets it expire) holding a slot (a released one's device gets it at its next eligible check-in)."""
        for device_id, flight in ((d, f) for d, f in self.machine.flights if f.holds_slot):
            self._send_task(device_id, flight, self.clock.now())

    def _send_task(self, device_id: str, flight: Flight, now: float) -> None:
        rnd = self.round
        if rnd is None or flight.base_version != self.state.version or flight.deadline <= now:
            return
        last = rnd.task_sent.get(device_id)
        if last is not None and now - last < self.config.task_resend_s:
            return
        rnd.task_sent[device_id] = now
        rnd.ctx.tasks[device_id] = flight.task_id
        task = replace(self.outbound.train_task(rnd, device_id, flight.deadline - now), round_id=flight.round_id)
        self.outbound.to_device(rnd, device_id, task)

    # ------------------------------------------------------------------ inbound

    def _register(self, device_id: str, eligible: bool, *args, **kwargs) -> None:
        super()._register(device_id, eligible, *args, **kwargs)
        if not eligible:  # also a Last Will's "offline" (Coordinator.handle): its flight, if any, frees its slot
            self.machine, _ = on_event(self.machine, CheckedIn(device_id, False))

    def _check_in(self, msg) -> None:
        self._register(msg.device_id, msg.eligible, msg.reason, msg.num_examples, backoff.fingerprint(msg))
        device_id, now = msg.device_id, self.clock.now()
        self._silent.discard(device_id)
        eligible = msg.eligible and not self.registry[device_id].parked  # parked: paced like an ineligible one
        self.machine, resend = on_event(self.machine, CheckedIn(device_id, eligible))  # takes or frees its slot
        if resend:  # it owes an answer: task lost?
            self._send_task(device_id, resend[0].flight, now)
        elif not eligible:  # a task in flight stays until its deadline or decline (not sent to be declined), slotless
            self._pace(device_id, pace.INELIGIBLE)
        elif self._rest.get(device_id, 0.0) > now:  # declined or let its task expire lately
            self._pace(device_id, pace.DECLINED)
        elif (self.round is None or not self.machine.has_free_slot()
              # the limit is >= 1 and walks every eligible device: asked only of one that gave already
              or (self._contributions[device_id] and self._contributions[device_id] >= self._per_device_limit())):
            self._pace(device_id, pace.NO_ROUND)
        # else: the next tick dispatches it a task

    def _report(self, report: Update | Decline, sender: str | None, size: int) -> None:
        now = self.clock.now()
        self._flush_if_full(now)  # before anything enters it: it was full when it was last seen
        self.registry.seen(sender, now)
        self._silent.discard(sender)
        if isinstance(report, Decline):
            self._async_decline(report, sender, now)
            return
        self._late_up = count_uplink(self.round, self._late_up, report, size, self.dense_limit)
        try:
            check_key(report, sender, self.journal.counted_digest)
            if self.round is None:  # not acked: the device resends it once a buffer is open
                self._reject(StaleRound("no buffer open"), sender, None)
                return
            self.machine, actions = on_event(self.machine, Arrived(report.device_id, report.task_id, now))
            if isinstance(actions[0], Reject):
                if actions[0].retired:  # its flight is gone (too stale, or too late: it rests, as if expired)
                    self._drop(report.device_id, actions[0].retired, now, rest=actions[0].reason == "stale_round")
                raise (StaleUpdate if actions[0].reason == "stale_update" else StaleRound)(actions[0].detail)
            staleness, flight = actions[0].staleness, self.machine.flight(report.device_id)
            try:
                accepted = check_update(report, sender, flight, self.round.ctx)
            except UpdateRejected:
                self._drop(report.device_id, flight.task_id, now)  # answered, refused (the Ack says why): rests
                raise
        except UpdateRejected as exc:
            self._reject(exc, sender, report)
            return
        self._accept_async(report, accepted, staleness, flight)

    def _accept_async(self, update: Update, accepted: Accepted, staleness: int, flight: Flight) -> None:
        rnd = self.round
        row = BufferedRow(update.device_id, update.round_id, update.update_id, accepted.digest, rnd.ctx.round_id,
                          rnd.events, staleness, update.num_examples, update.payload, b"", accepted.reported_norm)
        self.journal.add_update(row, flight.task_id)  # durable before the Ack: journal.py
        rnd.events += 1
        self._contributions[update.device_id] += 1
        self._add(accepted, staleness)
        self.metrics.update_accepted(update.device_id, update.num_examples, rnd.ctx.max_examples, rnd.ctx.equal_weights)
        self.staleness_seen.observe(staleness)
        self.outbound.ack(rnd, update, True, "")
        self.machine, actions = on_event(self.machine, Buffered(update.device_id))
        self._gauges()
        if any(isinstance(a, Flush) for a in actions):
            self._flush(self.clock.now())

    def _add(self, accepted: Accepted, staleness: int) -> None:
        """One update into the buffer: its delta times f(s), with its FedAvg weight (staleness.py);
        an aggregator that weights by staleness itself (the robust rules: clip, then weight) gets
        the raw delta and f(s) in its meta (aggregate.py)."""
        rnd, ctx = self.round, self.round.ctx
        weight = update_weight(accepted.num_examples, ctx.max_examples, ctx.equal_weights)
        factor = staleness_weight(staleness, self.config.async_.exponent)
        raw = getattr(rnd.aggregator, "weights_staleness", False)
        rnd.aggregator.add(accepted.delta if raw else scale(accepted.delta, factor),
                           UpdateMeta(accepted.device_id, weight, staleness, accepted.reported_norm, factor))
        loss = accepted.loss  # admission.reported_loss: None when it could not be a cross-entropy
        if loss is not None:
            rnd.loss_sum += weight * loss
            rnd.loss_weight += weight

    def _async_decline(self, decline: Decline, sender: str | None, now: float) -> None:
        flight = self.machine.flight(decline.device_id)
        if sender != decline.device_id or flight is None or flight.task_id != decline.task_id:
            self._reject(StaleRound(f"decline of task {decline.task_id}, not in flight"), sender, None)
            return
        self._drop(decline.device_id, flight.task_id, now)
        self.declines[tally_key(self.declines, decline.reason)] += 1
        if backoff.is_permanent(decline.reason):  # a rest would only space out the same decline: park it
            self.registry.park(decline.device_id, decline.reason)
        self.metrics.declined(decline.reason)
        log.info("async: %s declined task %s: %s", decline.device_id, decline.task_id, decline.reason)

    def _drop(self, device_id: str, task_id: str, now: float, rest: bool = True) -> None:
        self.journal.drop_task(task_id)
        if rest:  # a stale update does not rest its device: the slow tail gets its next task at once
            self._rest[device_id] = now + self.config.pace_declined_s  # else each refused update won a new task
        self.machine, _ = on_event(self.machine, Dropped(device_id))
        self._gauges()

    # ------------------------------------------------------------------ buffers

    def begin_round(self) -> bool:
        """Open the next buffer; False: no eligible device, or the privacy budget refused it."""
        if self.round is not None:
            raise RuntimeError(f"buffer {self.round.ctx.round_id} is still open")
        candidates, k = self.eligible_devices(), self.config.async_.buffer_size
        if not candidates:
            return False
        buffer_id = self.next_round_id
        # One accounting event per flush, charged as K of K (sampling rate 1): who lands in a buffer
        # depends on device speed, not on a uniform draw, so no amplification by sampling is claimed.
        plan = self.privacy.plan(buffer_id, k, k, k, self.state.extra)
        if plan is None and self.privacy.enabled:
            return False
        now, wall = self.clock.now(), self.clock.wall()
        self.machine = replace(self.machine, buffer_size=k)  # a resumed buffer kept its own (_resume)
        self.store.open_round(StoredRound(buffer_id, self.state.version, (), {}, k, k, wall,
                                          wall + self.config.round_deadline_s, privacy=plan and plan.to_json()))
        self.round, self._contributions = self._new_buffer(buffer_id, now, plan), Counter()
        (self.round.bytes_up, self.round.bytes_up_dense), self._late_up = self._late_up, (0, 0)
        self.metrics.round_begun(buffer_id)
        self.outbound.announce(self.state.version, self.round)
        log.info("buffer %d open on v%d (K = %d)", buffer_id, self.state.version, k)
        return True

    def tick(self):
        """Expire tasks past their deadline, dispatch to free slots; a flush's record, or None."""
        if self.outbound.announce_due:
            self.outbound.announce_or_defer(self.state.version, self.round)
        now = self.clock.now()
        self.evaluations.tick(now)
        self._flush_if_full(now)
        self.machine, actions = on_event(self.machine, Tick(now))
        for action in actions:
            if isinstance(action, Expire):
                self.journal.drop_task(action.task_id)
                # Not answered: it may be gone for good, and each new task would hold a slot until its
                # deadline, again and again. It is asked again once it says something (it rests first).
                self._rest[action.device_id] = now + self.config.pace_declined_s
                self._silent.add(action.device_id)
            elif isinstance(action, Dispatch) and self.round is not None:
                self._dispatch(action.count, now)
        self._gauges()
        return self._flushed.pop(0) if self._flushed else None

    def _per_device_limit(self) -> int:
        """Updates one device may put into one buffer. With central DP, 1: one flush's sensitivity
        is then S. Otherwise its fair share, ceil(K / devices present): 1 in any fleet of K or more
        present, so a device that answers at once cannot fill a buffer on its own while the others
        train (it once supplied every update of one, and so every input of the median); a fleet
        smaller than K still fills its buffers, each device as often as the others. Present: an
        eligible device with a task in flight or seen within pace_max_s (+ jitter), the longest a
        device is told to wait before it checks in again; a registered device that went away
        (shut down, or known only from the store after a restart) stops counting then, so it
        holds the buffer back for that long at most, not for good. Nor does one resting after a
        decline or an expired task: it is asked nothing until its rest ends (a device that declined
        every task, checking in after each, held the others to 1 of K and the buffer for good)."""
        if self.privacy.enabled or (self.round is not None and self.round.privacy is not None):
            return 1  # also a DP buffer resumed with privacy off since: it is still charged as one
        now, window = self.clock.now(), self.config.pace_max_s + self.config.pace_jitter_s
        present = sum(1 for d in self.eligible_devices() if self.machine.flight(d) is not None
                      or (now - self.registry[d].last_seen <= window and self._rest.get(d, 0.0) <= now))
        return max(1, math.ceil(self.machine.buffer_size / max(1, present)))

    def _say_why_waiting(self, limit: int) -> None:
        """Once per buffer, when it cannot fill now (waiting.py says when, and why)."""
        rnd, eligible = self.round, self.eligible_devices()
        if self._waiting_logged == rnd.ctx.round_id:
            return
        line = why_waiting(rnd.ctx.round_id, sum(self._contributions.values()), self.machine.buffer_size, eligible,
                           {d for d, _ in self.machine.flights}, self._contributions, limit,
                           self._silent, len(self.registry), self.privacy.enabled)
        if line is not None:
            self._waiting_logged = rnd.ctx.round_id
            log.warning("%s", line)

    def _dispatch(self, count: int, now: float) -> None:
        limit = self._per_device_limit()
        idle = [d for d in self.eligible_devices()
                if self.machine.flight(d) is None and self._rest.get(d, 0.0) <= now
                and self._contributions[d] < limit and d not in self._silent]
        if not idle:
            self._say_why_waiting(limit)
            return
        self._draws += 1
        rnd, wall, deadline_s = self.round, self.clock.wall(), self.config.round_deadline_s
        for device_id in sample_devices(idle, min(count, len(idle)), self.config.seed, self._draws):
            flight = Flight(uuid.uuid4().hex, rnd.ctx.round_id, self.state.version, now + deadline_s)
            # before the task leaves: journal.py
            self.journal.add_task(TaskRow(flight.task_id, device_id, flight.round_id, flight.base_version,
                                          wall + deadline_s))
            self.machine, _ = on_event(self.machine, Dispatched(device_id, flight))
            # The resend throttle is for this task: the device's answer to its last one, however
            # quick, must not hold back the new one (it did, until the device checked in again).
            rnd.task_sent.pop(device_id, None)
            self._send_task(device_id, flight, now)

    def _flush_if_full(self, now: float) -> None:
        """Flush a buffer resumed full (killed between its K-th update and the flush), before an
        update enters it: one that came before the first tick once made it K + 1, weighted as fresh."""
        if self.round is not None and self.machine.buffered >= self.machine.buffer_size:
            self._flush(now)

    def _flush(self, now: float) -> None:
        """Step the server optimizer on the buffer and commit the new version (or refuse it)."""
        rnd, n = self.round, self.round.aggregator.count
        state = self.strategy.apply(self.state, rnd.aggregate_input(len(self.registry)))
        carry = getattr(rnd.aggregator, "carry", None)
        if carry is not None:
            state = replace(state, extra={**state.extra, **carry()})
        fault = commit_fault(self.state, state, self.holdout)
        record = replace(rnd.record(fault is None, now), reports=n, selected=n, why=fault or "buffer_full")
        if fault is None:
            self.store.commit_round(record.round_id, state, asdict(record), self.clock.wall(), rnd.charge())
            self.machine, _ = on_event(self.machine, Flushed())
            self.state = state
        else:
            log.error("buffer %d: the new model is refused, the buffer dropped: %s", record.round_id, fault)
            self.store.abandon_round(record.round_id, asdict(record), self.clock.wall(), rnd.charge())
            self.machine = replace(self.machine, buffered=0)
        self.left_out.note(rnd.ctx.round_id, rnd.aggregator, self.metrics)  # LeftOut notes a buffer once
        self.journal.forget(record.round_id)
        self._flushed.append(self._close(record))
        if self.stop_after is None or not self.stop_after(record):
            self.begin_round()  # at once: updates keep arriving

    def _gauges(self) -> None:
        self.in_flight.set(self.machine.in_flight)
        self.buffered.set(self.machine.buffered)


def coordinator_class(config):
    """The Coordinator class a CoordinatorConfig's mode asks for."""
    return AsyncCoordinator if config.mode == "async" else Coordinator
