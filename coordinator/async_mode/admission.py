"""Admission of an async update: the sync checks (validation.py), against the task in flight.

Order: sender and a counted key (duplicate or conflicting: `check_key`); then, in the shell,
the buffer is open and the machine finds the task in flight and its staleness within
bounds; then `check_update`: round and task ids, model and base version, shapes, finite
values and norm, exactly as a sync round checks them. The staleness is the flight's (the
version the coordinator sent), never the update's own claim, which must still match it
(wrong_model).
"""

from __future__ import annotations

from collections.abc import Callable

from fedge.edge_runtime.kernel.protocol import Update

from ..admission import Accepted, reported_loss, reported_norm
from ..errors import StaleRound
from ..validation import (
    RoundContext,
    check_contents,
    check_control,
    check_current,
    check_not_seen,
    payload_digest,
    update_key,
)
from .machine import Flight


def flight_context(flight: Flight, device_id: str, base: RoundContext) -> RoundContext:
    """The validation context of one task in flight: its round, task and base version."""
    return RoundContext(flight.round_id, base.model_id, flight.base_version, {device_id: flight.task_id}, base.shapes,
                        base.norm_bound, False, 0.0, base.max_examples, base.equal_weights)


def check_key(update: Update, sender: str | None, counted: Callable[[str, int, str], str | None]) -> None:
    """Raise StaleRound for a sender that is not the device, DuplicateUpdate or
    ConflictingUpdate for a key counted before (in any kept buffer)."""
    if sender != update.device_id:
        raise StaleRound(f"update for device {update.device_id} arrived on device {sender}'s topic")
    digest = counted(*update_key(update))
    if digest is not None:
        check_not_seen(update, {update_key(update): digest})


def check_update(update: Update, sender: str | None, flight: Flight, base: RoundContext) -> Accepted:
    """The sync round's checks against the task in flight; raises the named UpdateRejected."""
    ctx = flight_context(flight, update.device_id, base)
    check_current(update, ctx, sender)
    delta, _ = check_contents(update, ctx), check_control(update, ctx)
    return Accepted(update.device_id, update.update_id, update.num_examples, payload_digest(update), delta, None,
                    reported_loss(update.metrics), reported_norm(update.metrics))
