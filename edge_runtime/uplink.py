"""Reliable answers upward: every update is resent until the coordinator acknowledges it.

QoS 1 is not enough: a broker may lose what it already acknowledged (killed with -9, or a
session that expired), so the device keeps each update in its journal and resends all of
them every `republish_s`, doubling the interval up to 2**5 times while no Ack comes (any Ack, or
a reconnect, resets it: the next resend is at most `republish_s` away), and
drops one nobody acknowledged for `pending_max_age_s`. A Decline is not kept on disk; the
last few are remembered and repeated when their task comes again. A sharded fleet's leader
may send a task again naming another shard (its worker died): the update of that task, the
same update id, then goes to the new shard (`retarget`), so no training is repeated and the
coordinator's (round, device, update id) key still tells a copy from a new update. Reads time from the
injected clock passed in by the agent; never sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from .journal import SEEN_TASKS_KEPT, DeviceJournal
from .kernel.codec import decode_message, encode_message
from .kernel.protocol import Decline, TrainTask, Update
from .uplink_rate import UplinkRate
from .uplink_rate_file import restore, save
from .upload_margin import UploadLink, margin_for_bytes, upload_margin_s

log = logging.getLogger("fedge.agent")

MAX_BACKOFF_STEPS = 5  # resend interval grows to republish_s * 2**5 while no Ack comes

Publish = Callable[..., None]  # (channel, payload, shard=-1): shard >= 0 picks the shard update topic


class Uplink:
    def __init__(self, device_id: str, journal: DeviceJournal, publish: Publish, republish_s: float,
                 pending_max_age_s: float, link: UploadLink | None = None, rate_path: Path | None = None):
        self.device_id = device_id
        self.journal = journal
        self.publish = publish
        self.republish_s = republish_s  # seconds
        self.pending_max_age_s = pending_max_age_s  # seconds
        self.next_republish = float("inf")  # clock seconds
        self.unacked_resends = 0
        self.declines: dict[str, bytes] = {}  # task_id -> the Decline sent, re-sent if the task comes again
        self.shards: dict[str, int] = {}  # task_id -> the shard its latest copy named (sharded fleets)
        self.link = link or UploadLink()  # what the upload margin assumes of the link (upload_margin.py)
        # learn_rate: each first send timed to its Ack (uplink_rate.py); None keeps the configured rate
        self.rate = UplinkRate(device_id, self.link.latency_s, self.link.bytes_per_s) if self.link.learn_rate else None
        # rate_path: the learned window kept across restarts (uplink_rate_file.py); None keeps it in memory
        self.rate_path = rate_path if self.rate is not None else None
        if self.rate_path is not None:
            restore(self.rate, self.rate_path)

    def margin_s(self, task: TrainTask, message_bytes: int | None = None) -> float:
        """Seconds before its deadline that the task's training stops, for its update's upload, or
        for a whole message of `message_bytes` (a secure round's key advertisement: secagg_intake.py)."""
        if self.rate is None:
            link, envelope = self.link, 0
        else:
            link, envelope = replace(self.link, bytes_per_s=self.rate.bytes_per_s), self.rate.margin_envelope_bytes
        if message_bytes is not None:  # its exact size: no envelope to add
            return margin_for_bytes(message_bytes, task.deadline_s, link)
        return upload_margin_s(task, link, envelope)

    def send_update(self, payload: bytes, now: float) -> None:
        self.next_republish = now + self.republish_s  # first: a failed publish is retried by the next resend
        update, sent_bytes = self._send(payload)
        if self.rate is not None:
            self.rate.sent(update.update_id, sent_bytes, now, len(update.payload) + len(update.control))

    def send_decline(self, decline: Decline) -> None:
        log.info("device %s: round %d task %s declined: %s%s", self.device_id, decline.round_id, decline.task_id,
                 decline.reason, f" ({decline.detail})" if decline.detail else "")
        self.publish("update", self.remember_decline(decline))
        self.journal.answered(decline.task_id)  # after it left: a crash before says "interrupted" on restart

    def remember_decline(self, decline: Decline) -> bytes:
        """Keep the Decline a task got, for repeat_decline (a secure round's are sent by its participant)."""
        payload = encode_message(decline)
        self.declines[decline.task_id] = payload
        if len(self.declines) > SEEN_TASKS_KEPT:
            self.declines.pop(next(iter(self.declines)))
        return payload

    def repeat_decline(self, task_id: str) -> bool:
        """Send again the Decline this task got; False if it got none."""
        payload = self.declines.get(task_id)
        if payload is None:
            return False
        self.publish("update", payload)
        return True

    def resend_all(self, now: float) -> int:
        """Send every unacknowledged update again (the broker is not a durable store)."""
        items = self.journal.pending.items()
        # Set first: if the broker refuses a publish, the next try waits its turn (backoff).
        self.next_republish = now + self.republish_s * 2 ** self.unacked_resends
        # Every frame here decodes: the journal sets aside at start a kept file that does not
        # (a bad sector; DeviceJournal._set_aside_foreign), and what it keeps later it encoded.
        for item in items:
            self._send(item.payload)
        return len(items)

    def retarget(self, task_id: str, shard: int) -> None:
        """The task came again naming `shard`: its update goes there from now on (this run)."""
        self.shards[task_id] = shard
        if len(self.shards) > SEEN_TASKS_KEPT:
            self.shards.pop(next(iter(self.shards)))

    def _send(self, payload: bytes) -> tuple[Update, int]:
        """An Update goes to the topic of the shard its task named; the kept frame says which
        (decoded here rather than journaled beside it, so the journal's format is unchanged),
        unless the task was retargeted since: then the frame is re-encoded naming the new shard.
        Returns (the update, the bytes published)."""
        update = decode_message(payload)
        shard = update.shard
        if shard >= 0 and self.shards.get(update.task_id, shard) != shard:
            shard = self.shards[update.task_id]
            payload = encode_message(replace(update, shard=shard))
        if shard >= 0:
            self.publish("update", payload, shard)
        else:
            self.publish("update", payload)
        return update, len(payload)

    def resend_due(self, now: float) -> bool:
        """True when unacknowledged updates wait and their resend time has come; drops the
        ones too old to matter and lengthens the next interval (the caller resends)."""
        pending = self.journal.pending
        if not len(pending) or now < self.next_republish:
            return False
        for stale in pending.older_than(self.pending_max_age_s):
            log.warning("device %s: dropping update %s of round %d: no Ack in %g s", self.device_id,
                        stale.update_id, stale.round_id, self.pending_max_age_s)
            pending.remove(stale.update_id)
        self.unacked_resends = min(self.unacked_resends + 1, MAX_BACKOFF_STEPS)
        return True

    def acked(self, now: float, update_id: str = "") -> None:
        """An Ack (of any update) came: the coordinator hears us, so what is still kept goes out
        at the base interval again, the next resend at most republish_s from now (one planned
        further out by the backoff, up to republish_s * 2**5, is brought forward). The Ack of
        an update's first send times the link (uplink_rate.py)."""
        self.unacked_resends = 0
        self.next_republish = min(self.next_republish, now + self.republish_s)
        if self.rate is not None and update_id and self.rate.acked(update_id, now) and self.rate_path is not None:
            save(self.rate, self.rate_path)

    def reconnected(self, now: float) -> None:
        """The link came back: resend at the base interval again (the agent resends at once); the
        time offline is not the link's rate, so no update in flight is timed (uplink_rate.py)."""
        self.acked(now)
        self.blocked()

    def blocked(self) -> None:
        """The agent runs blocking work: an Ack handled after it was stamped late (uplink_rate.py)."""
        if self.rate is not None:
            self.rate.forget()
