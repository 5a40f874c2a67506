"""Tasks a device declines without training them, by the ids it can read: tasks a previous run
received and never answered, and tasks whose frame the codec refused.

A task frame the codec refuses (a NaN or 1e30 learning rate, a batch size of 0, 10**12 steps:
values outside the wire's ranges, kernel/wire_fields.py) used to be dropped with a log line,
and its round waited for the deadline to learn nothing. When the frame itself is intact and its
round id, task id and device id are valid and name this device, and the device has not seen
that task id (a bad copy of a task it trained must not replace its Update), the device declines
it with the codec's reason (`malformed`): the coordinator counts it, paces the device, and
stops waiting. An EvalTask the codec refuses (an unsafe model id, a negative round id, an unknown
field) is answered the same way, with an EvalReport whose reason is the codec's and whose detail
names the field, when its eval id, device id and model version are valid and name this device:
the coordinator counts it as declined and closes the evaluation once every asked device has
answered, instead of at its deadline (evaluation.deadline_s, 120 s by default). A frame that is
damaged (checksum, length, msgpack) names nobody reliably and is only logged, as before; so is
one over the device's size limit, which is never parsed.
"""

from __future__ import annotations

import logging

from .kernel.codec import check_field, frame_body
from .kernel.errors import CodecError, MalformedPayload
from .kernel.protocol import Decline, EvalReport, EvalTask, TrainTask
from .kernel.secagg.messages import KeyDirectory, SecAggTask, ShareDelivery, UnmaskRequest
from .kernel.wire_fields import MAX_TEXT

log = logging.getLogger("fedge.agent")

INTERRUPTED = "interrupted"  # a previous run stopped before it answered the task
_TASK_IDS = ("task_id", "round_id", "device_id")
_EVAL_IDS = ("eval_id", "model_version", "device_id")  # what an EvalReport must repeat to be counted
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


def unreadable_task(payload: bytes, exc: CodecError, device_id: str,
                    max_bytes: int) -> Decline | EvalReport | None:
    """The Decline for a task frame (TrainTask, SecAggTask, or a later stage of a secure round:
    a KeyDirectory with a 31-byte key, say) that decode_message refused with `exc`, the refusing
    EvalReport for such an EvalTask, or None when the frame is not one, is damaged, or does not
    name this device by valid ids. A later stage's Decline says "during", as the participant's
    own declines do."""
    found = frame_body(payload, max_bytes)
    if found is None:
        return None
    cls, body = found
    if cls is EvalTask:
        ids = _ids(EvalTask, body, _EVAL_IDS, device_id)
        return None if ids is None else EvalReport(device_id, ids[0], ids[1], reason=exc.reason,
                                                   detail=str(exc)[:MAX_TEXT])
    if cls is SecAggTask:
        cls, body = TrainTask, body.get("task")
    ids = _ids(cls, body, _TASK_IDS, device_id) if cls in (TrainTask, *_STAGES) else None
    if ids is None:
        return None
    task_id, round_id, _ = ids
    return Decline(device_id, round_id, task_id, exc.reason, str(exc)[:1000], "during" if cls in _STAGES else "before")


def _ids(cls: type, body, names: tuple[str, ...], device_id: str) -> list | None:
    """The fields `names` of a refused frame's body as decode takes them, when each is valid, the
    first (the task's id) is not empty and the last names this device; else None."""
    if not isinstance(body, dict):
        return None
    try:
        ids = [check_field(cls, name, body[name]) for name in names]
    except (KeyError, MalformedPayload):
        return None
    return ids if ids[0] and ids[-1] == device_id else None


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
