"""Admission: one decision per inbound report, `admit(update, sender, view) -> Accepted | Rejected`.

The checks themselves are validation.py's, in its order; this module owns the order in
which they meet the coordinator's state (the AdmissionView), so the server asks once and
executes the answer. The restart replay builds its Accepted values with the same decoder
(`replayed`), so an update is decoded by one function whether it arrives or is replayed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np

from fedge.edge_runtime.kernel.protocol import Decline, Update

from .errors import DuplicateUpdate, StaleRound, StoreCorrupt, UpdateRejected
from .store import StoredUpdate
from .validation import (
    RoundContext,
    bytes_digest,
    check_contents,
    check_control,
    check_current,
    check_not_seen,
    decode_delta,
    payload_digest,
    update_key,
)

Key = tuple[str, int, str]  # (device, round, update_id)


@dataclass(frozen=True)
class AdmissionView:
    """What admission may know of the coordinator: the open round (None between rounds),
    the keys it has counted, whom its machine still expects, keys counted in closed rounds
    (the store's `counted_digest`), and for declines: whose reply to the round's current stage
    it has counted (`answered`) and whose decline (`declined`)."""

    ctx: RoundContext | None
    seen: Mapping[Key, str]
    expects: Callable[[str], bool]
    counted_before: Callable[[str, int, str], str | None]
    answered: Callable[[str], bool] = lambda _device: False
    declined: Collection[str] = frozenset()


def view_of(rnd, counted_before: Callable[[str, int, str], str | None]) -> AdmissionView:
    """The view of the open round (records.OpenRound), or of none between rounds."""
    if rnd is None:
        return AdmissionView(None, {}, lambda _device: False, counted_before)
    m = rnd.machine  # the machine now: the view answers for one message
    return AdmissionView(rnd.ctx, rnd.seen, m.expects, counted_before, lambda d: d in m.reported, rnd.decline_from)


@dataclass(frozen=True)
class Accepted:
    device_id: str
    update_id: str
    num_examples: int
    digest: str  # payload_digest: what the store and the duplicate check compare
    delta: dict[str, np.ndarray]  # dense
    control: dict[str, np.ndarray] | None  # dense Δc_i in a SCAFFOLD round, else None
    loss: float | None = None  # the device's reported training loss (Update.metrics); the store keeps none
    # the device's reported delta norm before its clip (Update.metrics["norm"]), kept by the store:
    # adaptive clipping's bit (coordinator/dp/round.py); None when absent or not a finite number >= 0
    reported_norm: float | None = None


@dataclass(frozen=True)
class Rejected:
    error: UpdateRejected

    @property
    def reason(self) -> str:
        return self.error.reason


def admit(update: Update, sender: str | None, view: AdmissionView) -> Accepted | Rejected:
    """Current round and task, key not seen (here or in a closed round), expected by the
    round machine, then the contents (validation.py)."""
    try:
        ctx = view.ctx
        try:
            if ctx is None:
                raise stale(update)
            check_current(update, ctx, sender)
        except StaleRound:
            if sender == update.device_id:  # counted in a closed round, its Ack lost: a duplicate
                digest = view.counted_before(*update_key(update))
                check_not_seen(update, {update_key(update): digest} if digest is not None else {})
            raise
        check_not_seen(update, view.seen)
        if not view.expects(update.device_id):  # the round is open, but has what it wants from this device
            raise StaleRound(f"round {update.round_id} is open but takes no more from {update.device_id}: it has "
                             "the reports it wants (over-selection) or already counted this device's")
        delta, control = check_contents(update, ctx), check_control(update, ctx)
    except UpdateRejected as exc:
        return Rejected(exc)
    return Accepted(update.device_id, update.update_id, update.num_examples, payload_digest(update), delta, control,
                    reported_loss(update.metrics), reported_norm(update.metrics))


def reported_loss(metrics: dict) -> float | None:
    """metrics["loss"] when it could be a cross-entropy: a finite number in [0, 1e12). A device's
    word, checked against nothing: anything else (negative, NaN, 1e300) is left out rather than
    allowed to move the round's mean loss."""
    loss = metrics.get("loss")
    ok = isinstance(loss, (int, float)) and not isinstance(loss, bool) and 0 <= loss < 1e12  # NaN fails
    return float(loss) if ok else None


def reported_norm(metrics: dict) -> float | None:
    """metrics["norm"] when it is a finite number >= 0 (a device's word: anything else is ignored)."""
    norm = metrics.get("norm")
    ok = isinstance(norm, (int, float)) and not isinstance(norm, bool) and math.isfinite(norm) and norm >= 0
    return float(norm) if ok else None


def check_decline(decline: Decline, sender: str | None, view: AdmissionView) -> Rejected | None:
    """A decline counts only for the open round's task of its own device, once, and only while
    the device has not answered the round's current stage. A decline after the device's update
    (or its reply to a secure round's stage) would count it both as a report and as a decline;
    a second decline of the task is a duplicate (a fedge device repeats its decline when its
    task comes again, and a QoS 1 task can)."""
    try:
        if view.ctx is None:
            raise stale(decline)
        check_current(decline, view.ctx, sender)
        if decline.device_id in view.declined:
            raise DuplicateUpdate(f"a decline of task {decline.task_id} from {decline.device_id} was counted already")
        if view.answered(decline.device_id):
            raise StaleRound(f"task {decline.task_id} of {decline.device_id} was answered already; a decline does not "
                             "take its answer back")
    except UpdateRejected as exc:
        return Rejected(exc)
    return None


def replayed(stored: StoredUpdate, ctx: RoundContext) -> Accepted:
    """An update the store holds for the open round, as admit() accepted it. Its bytes must
    still have the digest admit() saw: a payload log or db changed on disk since (bit rot, a
    restore that mixed files of two backups) stops the start rather than adding other bytes."""
    check_stored_digest(stored.payload, stored.control, stored.digest, f"{stored.update_id} from "
                        f"{stored.device_id} (round {ctx.round_id})")
    delta = decode_delta(stored.payload, ctx.shapes)
    control = decode_delta(stored.control, ctx.shapes, "control") if stored.control else None
    return Accepted(stored.device_id, stored.update_id, stored.num_examples, stored.digest, delta, control,
                    reported_norm=stored.reported_norm)


def check_stored_digest(payload: bytes, control: bytes, digest: str, what: str) -> None:
    """StoreCorrupt unless stored bytes still have the digest they were accepted with."""
    if bytes_digest(payload, control) != digest:
        raise StoreCorrupt(f"stored update {what} no longer has the digest it was accepted with; "
                           "its payload bytes changed on disk")


def stale(report) -> UpdateRejected:
    return StaleRound(f"round {report.round_id} from {report.device_id} is not open")
