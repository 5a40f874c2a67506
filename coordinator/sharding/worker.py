"""An aggregator worker: `fedge coordinator serve --role worker` (sharding/__init__.py draws the flow).

One process serves one shard at a time. It loops over the K shards trying each one's lease
(lease.py); the first it wins it serves until the lease fails, then it loops again. A shard
whose worker died is taken by whichever worker process tries its lock next (a spare). Its
MQTT session is persistent under a client id fixed per shard (fedge-shard-{k}, clean_start
false), so the updates queued for the dead worker's session are delivered to the one that
takes the shard over, and the (round, device, update id) key in shard_updates makes a
redelivered update a duplicate, never a second add. With no spare, the leader moves the
shard's uncounted devices to live shards (leader.py); the worker counts a device only on the
shard the round's STORED assignment names (tables.assigned, re-checked under lock in
tables.count), and refuses any other by name: wrong_shard.

Each update is checked by the coordinator's own admission (admission.admit: round, task,
key, model, shapes, finite, norm bound), then counted (tables.count: the messages waiting in
the queue, up to BURST, share one transaction, so one flush), then acknowledged: an Ack never
leaves before its update is in the sum. In a DP round the delta is clipped to the round's S
before it is summed (privacy.py). Refusals are named,
logged, counted (fedge_updates_rejected{reason}) and acked as refused, as the coordinator does.
"""

from __future__ import annotations

import logging
import threading
import time

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConnectionLost, NotConnected
from fedge.edge_runtime.kernel.flood import FloodLog
from fedge.edge_runtime.kernel.protocol import (
    Ack,
    Update,
    device_topic,
    shard_client_id,
    shard_of,
    shard_updates_filter,
)
from fedge.edge_runtime.kernel.transport.base import Message, Transport

from ..admission import Accepted, AdmissionView, admit
from ..errors import StaleRound, StoreLinkLost, UnexpectedMessage, UpdateRejected, WrongShard
from ..leadership import LeadershipError
from ..metrics import CoordinatorMetrics
from ..validation import RoundContext, decode_inbound
from ..weights import update_weight
from .lease import ShardLease
from .privacy import bounded, round_clip
from .tables import COUNTED, DUPLICATE, Counted, RoundClosed, ShardTables

log = logging.getLogger("fedge.coordinator.worker")
BURST = 200  # messages counted in one transaction at most (group commit, as coordinator/loop.py's bursts)


class ShardWorker:
    """Counts one shard's updates. `handle(message)` per inbound message; `refresh()` reads the
    open round (call it often: every message is checked against the round it names)."""

    def __init__(self, shard: int, epoch: int, tables: ShardTables, transport: Transport, config,
                 model_id: str, shapes: dict[str, tuple[int, ...]], metrics: CoordinatorMetrics | None = None):
        self.shard, self.epoch, self.tables, self.transport = shard, epoch, tables, transport
        self.config, self.model_id, self.shapes = config, model_id, shapes
        self.metrics = metrics or CoordinatorMetrics()
        self.ctx: RoundContext | None = None
        self.clip: float | None = None  # S of a DP round: each delta is clipped before it is summed (privacy.py)
        self.accepted = 0
        self._flood = FloodLog(log)

    def refresh(self) -> None:
        row = self.tables.open_round()
        if row is None:
            self.ctx = None
        elif self.ctx is None or self.ctx.round_id != row[0]:
            round_id, version, tasks = row
            cfg = self.config
            self.ctx = RoundContext(round_id, self.model_id, version, tasks, self.shapes, cfg.norm_bound,
                                    False, cfg.control_norm_bound, cfg.max_examples, cfg.weighting == "equal")
            self.clip = round_clip(self.tables, round_id)

    def handle(self, msg: Message) -> None:
        self.handle_burst([msg])

    def handle_burst(self, msgs: list[Message]) -> None:
        """Check each message, count the admitted ones in ONE transaction (tables.count; group
        commit: one flush for the burst), then Ack them."""
        self.refresh()
        self._count([u for u in map(self._precheck, msgs) if u is not None])

    def _count(self, updates: list[Update]) -> None:
        # A device's second update in a burst waits for the first one's transaction, so that
        # admission meets it as it would meet a counted key (duplicate, conflicting, or not
        # expected), and no "duplicate" Ack leaves before the update it names is stored.
        firsts, again, devices = [], [], set()
        for update in updates:
            (again if update.device_id in devices else firsts).append(update)
            devices.add(update.device_id)
        ctx, admitted = self.ctx, []
        rid = ctx.round_id if ctx is not None else -1
        current = sorted({u.device_id for u in firsts if u.round_id == rid})
        counted = self.tables.counted(rid, current)
        assigned = self.tables.assigned(rid, current, self.config.shards)
        declined = self.tables.declined(rid, current)  # a device that declined is no longer expected
        for update in firsts:
            if assigned.get(update.device_id, self.shard) != self.shard:  # the leader moved it (or never sent it here)
                why = f"round {rid} assigns {update.device_id} to shard {assigned[update.device_id]}, not {self.shard}"
                self._reject(WrongShard(why), update.device_id, update)
                continue
            keys = counted.get(update.device_id, {})
            view = AdmissionView(ctx, keys, lambda d, keys=keys: ctx is not None and d in ctx.tasks and not keys
                                 and d not in declined, self.tables.counted_digest)
            verdict = admit(update, update.device_id, view)
            if not isinstance(verdict, Accepted):
                self._reject(verdict.error, update.device_id, update)
                continue
            weight = update_weight(update.num_examples, ctx.max_examples, ctx.equal_weights)
            admitted.append((update, Counted((update.device_id, update.update_id), verdict.digest, weight,
                                             update.payload, bounded(verdict.delta, self.clip))))
        if admitted:
            try:
                verdicts = self.tables.count(self.shard, self.epoch, rid, [c for _, c in admitted], self.shapes,
                                             self.config.shards)
            except RoundClosed as exc:
                verdicts = None
                for update, _ in admitted:
                    self._reject(StaleRound(str(exc)), update.device_id, update)
            for (update, _), verdict in zip(admitted, verdicts or ()):
                if verdict == COUNTED:
                    self.accepted += 1
                    self.metrics.update_accepted(update.device_id, update.num_examples, ctx.max_examples,
                                                 ctx.equal_weights)
                    self._ack(update, True, "")
                elif verdict == DUPLICATE:  # counted before: the device stops resending
                    self._ack(update, True, "duplicate")
                else:  # moved by the leader between our read and our lock
                    self._reject(WrongShard(f"round {rid} moved {update.device_id} off shard {self.shard}"),
                                 update.device_id, update)
        if again:
            self._count(again)

    def _precheck(self, msg: Message) -> Update | None:
        """Frame, channel and shard; None (after the rejection) when the message fails them."""
        where = shard_of(msg.topic)
        sender = where[1] if where else None
        try:
            update = decode_inbound(msg, self.config.max_update_bytes)
        except UpdateRejected as exc:
            return self._reject(exc, sender, None)
        if not isinstance(update, Update) or where is None or update.device_id != sender:
            return self._reject(UnexpectedMessage(f"{type(update).__name__} on {msg.topic}"), sender, None)
        if self.config.secure_aggregation.enabled:  # a secure round's inputs are masked and go to the leader
            return self._reject(UnexpectedMessage(f"{sender}: a plain Update in a secure fleet"), sender, update)
        if where[0] != self.shard or update.shard != self.shard:
            why = f"{sender} sent to shard {where[0]} (task shard {update.shard}); this is shard {self.shard}"
            return self._reject(WrongShard(why), sender, update)
        return update  # whether the round assigns the device here: _count, against the stored assignment

    def _reject(self, exc: UpdateRejected, sender: str | None, update: Update | None) -> None:
        self.metrics.rejected(exc.reason)
        level = logging.INFO if exc.reason in ("stale_round", "duplicate") else logging.WARNING
        self._flood(level, exc.reason, "shard %d: rejected message from %s: %s (%s)", self.shard, sender or "?",
                    exc.reason, exc)
        if update is not None and sender == update.device_id:
            self._ack(update, exc.reason == "duplicate", exc.reason)

    def _ack(self, update: Update, accepted: bool, reason: str) -> None:
        ack = Ack(update.device_id, update.round_id, update.task_id, update.update_id, accepted, reason)
        self.transport.publish(device_topic(update.device_id, "ack"), encode_message(ack), qos=1)


def take_a_shard(dsn: str, shards: int, stop: threading.Event, poll_s: float = 0.2) -> ShardLease | None:
    """Loop over the shards until one's lease is won (None: stopped). A worker beyond K waits
    here as a standby for any shard, polling each lock on one connection per shard."""
    leases = [ShardLease(dsn, shard) for shard in range(shards)]
    won, said = None, False
    try:
        while won is None and not stop.is_set():
            won = next((lease for lease in leases if lease.try_acquire()), None)
            if won is None:
                if not said:
                    log.info("worker: every shard of %d is held; standing by", shards)
                    said = True
                stop.wait(poll_s)
    finally:
        for lease in leases:
            if lease is not won:
                lease.close()
    return won


def next_burst(transport: Transport, timeout: float) -> list[Message]:
    """What the transport holds now, up to BURST messages; waits up to `timeout` for the first."""
    burst: list[Message] = []
    while len(burst) < BURST and (msg := transport.receive(0.0 if burst else timeout)) is not None:
        burst.append(msg)
    return burst


def serve_shard(worker: ShardWorker, lease: ShardLease, stop: threading.Event, check_s: float = 0.5) -> None:
    """Subscribe and count until `stop`, the lease fails (LeadershipError propagates) or the shard
    tables' connection breaks (StoreLinkLost propagates: exit 1, the restart reconnects)."""
    worker.transport.subscribe(shard_updates_filter(worker.shard), qos=1)
    log.info("worker: serving shard %d (epoch %d)", worker.shard, worker.epoch)
    next_check = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_check:
            lease.check()
            worker.refresh()
            next_check = time.monotonic() + check_s
        try:
            burst = next_burst(worker.transport, 0.1)
        except (ConnectionLost, NotConnected) as exc:  # the transport reconnects by itself
            log.warning("worker: shard %d link down: %s", worker.shard, exc)
            stop.wait(0.2)
            continue
        if burst:
            try:
                worker.handle_burst(burst)
            except (LeadershipError, StoreLinkLost):
                raise  # fenced out, lease lost, or its tables' connection broken for good: this process must stop
            except Exception as exc:  # noqa: BLE001 - as the coordinator's loop: no message stops the worker
                # Unacked, so the devices resend; a crash instead would hand the same message to the
                # spare that takes the shard, and to the next.
                worker.metrics.rejected(f"internal:{type(exc).__name__}")
                log.exception("worker: shard %d dropped a burst of %d messages", worker.shard, len(burst))


__all__ = ["LeadershipError", "ShardWorker", "next_burst", "serve_shard", "shard_client_id", "take_a_shard"]
