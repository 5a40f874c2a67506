"""Everything the coordinator publishes: tasks, the round's model parts, acks, paces and the
retained announcement. Byte counts go to the open round and the metrics here, in one place.

A message the codec refuses to encode (a value out of the wire's range: config._check_wire
refuses such values at start, and records._device_clip keeps the norm bound within it, but a
value computed at run time may still drift out) is not sent: it is logged, counted in
fedge_unsendable_total{kind}, and dropped, so the service goes on. A dropped task or Ack costs
what a lost message costs (the round's deadline, the device's resend)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import (
    ConnectionLost,
    MalformedPayload,
    NotConnected,
    PayloadTooLarge,
    PublishRefused,
)
from fedge.edge_runtime.kernel.flood import worth_logging
from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    Ack,
    Announcement,
    Pace,
    TrainTask,
    Update,
    device_topic,
    model_part_topic,
)
from fedge.edge_runtime.kernel.transport.base import Transport

from . import pace
from .config import CoordinatorConfig, task_seed
from .metrics import CoordinatorMetrics
from .records import OpenRound

log = logging.getLogger("fedge.coordinator")


class Outbound:
    def __init__(self, transport: Transport, metrics: CoordinatorMetrics, config: CoordinatorConfig,
                 model_id: str, manifest_sha256: str, session: str):
        self.transport = transport
        self.metrics = metrics
        self.config = config
        self.model_id = model_id
        self.manifest_sha256 = manifest_sha256
        self.session = session  # in every Announcement: devices check in again when it changes
        self.parts_retained = 0  # model-part topics this process left a retained message on
        self.announce_due = False  # the last announcement could not be published; tick() retries
        self.unsendable: Counter[str] = Counter()  # messages the codec refused, by kind (see encode)
        # Every Ack goes through this: the coordinator's group commit holds it until the updates
        # waiting for their store write are written (group_commit.py); by default, sent at once.
        self.defer: Callable[[Callable[[], None]], None] = lambda send: send()
        # Sharded fleets (coordinator/sharding/leader.py): the shard each task names; -1 = none,
        # and the field stays off the wire.
        self.shard_for: Callable[[str], int] = lambda _device_id: -1

    def encode(self, message) -> bytes | None:
        """The message's wire bytes, or None (logged and counted) if the codec refuses a value."""
        try:
            return encode_message(message)
        except MalformedPayload as exc:
            kind = type(message).__name__
            self.metrics.unsendable.labels(kind).inc()
            n = self.unsendable[kind] = self.unsendable[kind] + 1
            if worth_logging(n):  # one bad value repeats for every device: log a sample
                log.error("coordinator: a %s it made is out of the wire's range and was not sent (%d so far): %s",
                          kind, n, exc)
            return None

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.transport.publish(topic, payload, qos=1, retain=retain)
        self.metrics.bytes_down.inc(len(payload))

    def ack(self, rnd: OpenRound | None, update: Update, accepted: bool, reason: str) -> None:
        self.defer(lambda: self._ack(rnd, update, accepted, reason))

    def _ack(self, rnd: OpenRound | None, update: Update, accepted: bool, reason: str) -> None:
        ack = self.encode(Ack(update.device_id, update.round_id, update.task_id, update.update_id, accepted, reason))
        if ack is None:
            return
        if rnd is not None:
            rnd.bytes_down += len(ack)
        self.send(device_topic(update.device_id, "ack"), ack)

    def task(self, rnd: OpenRound, device_id: str, now: float, inline: bool = False) -> bool:
        """The device's TrainTask, unless its deadline passed or it left less than task_resend_s
        ago; whether it went."""
        sent = rnd.inline_sent if inline else rnd.task_sent
        last = sent.get(device_id)
        remaining = rnd.machine.deadline - now
        if remaining <= 0 or (last is not None and now - last < self.config.task_resend_s):
            return False
        sent[device_id] = now
        self.to_device(rnd, device_id, self.train_task(rnd, device_id, remaining, inline))
        return True

    def train_task(self, rnd: OpenRound, device_id: str, remaining: float, inline: bool = False) -> TrainTask:
        ctx = rnd.ctx
        by_ref = bool(rnd.round_model_sha256) and not inline
        return TrainTask(round_id=ctx.round_id, task_id=ctx.tasks[device_id], device_id=device_id,
                         model_id=ctx.model_id, model_version=ctx.model_version,
                         params=b"" if by_ref else rnd.params_bytes, hyper=rnd.hyper,
                         compression=rnd.compression or self.config.compression, deadline_s=remaining,
                         seed=task_seed(self.config.seed, ctx.round_id),
                         correction=b"" if by_ref else rnd.correction_bytes, manifest_sha256=self.manifest_sha256,
                         round_model_sha256=rnd.round_model_sha256 if by_ref else "",
                         shard=self.shard_for(device_id))

    def to_device(self, rnd: OpenRound, device_id: str, message) -> None:
        """One message on the device's task channel, counted to the round."""
        payload = self.encode(message)
        if payload is None:
            return
        rnd.bytes_down += len(payload)
        self.send(device_topic(device_id, "task"), payload)

    def model(self, rnd: OpenRound) -> None:
        """The round's model, once, as retained parts; tasks name it by hash. Parts left over
        from a larger model of an earlier round are deleted (an empty retained publish)."""
        sent = 0
        try:
            for part in rnd.model_parts:
                self.send(model_part_topic(sent), part, retain=True)
                rnd.bytes_down += len(part)
                sent += 1
        except PayloadTooLarge as exc:  # a retained part cannot be chunked
            log.error("round %d: model part over the broker's packet limit (%s); lower [coordinator] "
                      "model_part_bytes. This round's tasks carry the params inline.", rnd.ctx.round_id, exc)
            rnd.round_model_sha256, rnd.model_parts = "", ()
        retained = len(rnd.model_parts)
        for index in range(retained, max(sent, self.parts_retained)):  # stale, or sent before the refusal
            self.send(model_part_topic(index), b"", retain=True)
        self.parts_retained = retained

    def pace(self, rnd: OpenRound | None, device_id: str, reason: str, round_id: int, now: float,
             cause: str = "") -> None:
        """Tell a device with nothing to do when to check in again (pace.py says how long; cause,
        the device's own reason, shortens a decline's backoff)."""
        cfg = self.config
        remaining = rnd.machine.deadline - now if rnd is not None else 0.0
        delay = pace.retry_after(reason, remaining, idle_s=cfg.pace_idle_s, declined_s=cfg.pace_declined_s,
                                 jitter_s=cfg.pace_jitter_s, max_s=cfg.pace_max_s,
                                 jitter=pace.jitter_fraction(cfg.seed, device_id, round_id), device_reason=cause)
        payload = self.encode(Pace(device_id, delay, reason))
        if payload is None:
            return
        self.send(device_topic(device_id, "task"), payload)
        self.metrics.pace.labels(reason).inc()

    def announce(self, version: int, rnd: OpenRound | None) -> None:
        note = Announcement(self.model_id, version, self.manifest_sha256, rnd.ctx.round_id if rnd else 0,
                            "training" if rnd else "idle", self.session)
        payload = self.encode(note)
        if payload is not None:  # refused: counted and logged; the next version's announcement may pass
            self.send(ANNOUNCE_TOPIC, payload, retain=True)
        self.announce_due = False

    def announce_or_defer(self, version: int, rnd: OpenRound | None) -> None:
        """Announce now, or, without a link, leave it to tick() or on_reconnect()."""
        try:
            self.announce(version, rnd)
        except (NotConnected, ConnectionLost, PublishRefused) as exc:  # not sent: try again later
            if not self.announce_due:
                log.warning("coordinator: announcement deferred until the link is back: %s", exc)
            self.announce_due = True
