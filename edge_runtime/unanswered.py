"""Tasks a device declines without training them, by the ids it can read: tasks a previous run
received and never answered, and tasks whose frame the codec refused.

A task frame the codec refuses (a NaN or 1e30 learning rate, a batch size of 0, 10**12 steps:
values outside the wire's ranges, kernel/wire_fields.py) used to be dropped with a log line,
and its round waited for the deadline to learn nothing. When the frame itself is intact and its
round id, task id and device id are valid and name this device, and the device has not seen
that task id (a bad copy of a task it trained must not replace its Update), the device declines
it with the codec's reason (`malformed`): the coordinator counts it, paces the device, and
stops waiting. A frame that is damaged (checksum, length, msgpack) names nobody reliably and is
only logged, as before; so is one over the device's size limit, which is never parsed.
"""

from __future__ import annotations

import logging

from .kernel.codec import check_field, frame_body
from .kernel.errors import CodecError, MalformedPayload
from .kernel.protocol import Decline, TrainTask
from .kernel.secagg.messages import KeyDirectory, SecAggTask, ShareDelivery, UnmaskRequest

log = logging.getLogger("fedge.agent")

INTERRUPTED = "interrupted"  # a previous run stopped before it answered the task
_IDS = ("round_id", "task_id", "device_id")
_STAGES = (KeyDirectory, ShareDelivery, UnmaskRequest)  # a secure round's requests after its SecAggTask


def interrupted(journal, answered_now, device_id: str) -> list[Decline]:
    """Declines for the tasks a previous run of this device received but never answered (it
    stopped while training, or while waiting for the model), so their rounds need not wait for
    the deadline; tasks in `answered_now` are this run's."""
    out = []
    for task_id, round_id in journal.interrupted():
        if task_id in answered_now:
            continue
        log.warning("device %s: task %s of round %d was interrupted before it was answered; declining it",
                    device_id, task_id, round_id)
        out.append(Decline(device_id, round_id, task_id, INTERRUPTED, "the device stopped before it answered this "
                           "task", "during"))
    return out


def unreadable_task(payload: bytes, exc: CodecError, device_id: str, max_bytes: int) -> Decline | None:
    """The Decline for a task frame (TrainTask, SecAggTask, or a later stage of a secure round:
    a KeyDirectory with a 31-byte key, say) that decode_message refused with `exc`, or None when
    the frame is not one, is damaged, or does not name this device by valid ids. A later stage's
    Decline says "during", as the participant's own declines do."""
    found = frame_body(payload, max_bytes)
    if found is None:
        return None
    cls, body = found
    if cls is SecAggTask:
        cls, body = TrainTask, body.get("task")
    if cls not in (TrainTask, *_STAGES) or not isinstance(body, dict):
        return None
    try:
        round_id, task_id, named = (check_field(cls, name, body[name]) for name in _IDS)
    except (KeyError, MalformedPayload):
        return None
    if named != device_id or not task_id:
        return None
    return Decline(device_id, round_id, task_id, exc.reason, str(exc)[:1000], "during" if cls in _STAGES else "before")


def answer_unreadable(decline: Decline, known: bool, journal, uplink) -> None:
    """Send `decline` for a task the device has not seen, recorded as received and answered, so
    a copy of it, bad or mended, gets the same Decline and never trains. For a `known` task,
    only a Decline it got is repeated: a bad copy of a task it trained gets nothing (its Update stands).
    Known: in the task table or the journal, or a secure round's task, which neither holds (the
    participant's session, or one waiting for its model): a bad copy of that was declined "before"
    while the device had advertised keys in its round."""
    if decline.stage == "during":  # a later stage of a secure round: no task of the journal's, declined each time
        uplink.send_decline(decline)
        return
    if known:
        uplink.repeat_decline(decline.task_id)
        return
    journal.received(decline.task_id, decline.round_id)
    uplink.send_decline(decline)
