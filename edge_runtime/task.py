r"""A device task's life as a transition table that returns actions, free of I/O (h11 style).

    idle --accept--> eligible --start--> training --trained--> uploading --ack--> acknowledged
      |                 |                    |                      \--rejected--> rejected
      |                 |                    |--abort--> aborted
      \--decline-->     \--decline-->        \--decline--> declined

idle: received, not yet looked at. eligible: accepted (its model id is a safe name); its model
or its round's params may still be on the way. training: handed to the runtime, which may
still decline it (not eligible now) or abort it between steps. uploading: its update is kept
on disk and sent, until the coordinator's Ack.

`on_event(state, event)` decides; the agent executes the actions it returns (publish, train,
fetch) and is the only place with clocks and I/O. Times come in on the events, so the
deadline rule is tested here without a clock: training stops the upload margin before the
deadline (upload_margin.py), so that its update lands in time. `advance(state, name)` is the bare table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from .upload_margin import NO_TIME_TO_UPLOAD


class TaskState(str, Enum):
    IDLE = "idle"
    ELIGIBLE = "eligible"
    TRAINING = "training"
    UPLOADING = "uploading"
    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"
    DECLINED = "declined"
    ABORTED = "aborted"


TRANSITIONS: dict[tuple[TaskState, str], TaskState] = {
    (TaskState.IDLE, "accept"): TaskState.ELIGIBLE,
    (TaskState.IDLE, "decline"): TaskState.DECLINED,
    (TaskState.ELIGIBLE, "start"): TaskState.TRAINING,
    (TaskState.ELIGIBLE, "decline"): TaskState.DECLINED,
    (TaskState.TRAINING, "decline"): TaskState.DECLINED,
    (TaskState.TRAINING, "abort"): TaskState.ABORTED,
    (TaskState.TRAINING, "trained"): TaskState.UPLOADING,
    (TaskState.UPLOADING, "ack"): TaskState.ACKNOWLEDGED,
    (TaskState.UPLOADING, "rejected"): TaskState.REJECTED,
}
TERMINAL = {TaskState.ACKNOWLEDGED, TaskState.REJECTED, TaskState.DECLINED, TaskState.ABORTED}

SAFE_MODEL_ID = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z_.-]{0,127}")  # it names a directory on the device


class InvalidTransition(ValueError):
    pass


def advance(state: TaskState, event: str) -> TaskState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"task cannot go from {state.value} on {event!r}") from None


# ------------------------------------------------------------------ events (what happened)

@dataclass(frozen=True)
class Received:
    model_id: str


@dataclass(frozen=True)
class InputsReady:
    """The task's model is installed and its params are at hand."""
    now: float  # clock seconds
    received_at: float  # clock seconds; the task's deadline_s counts from here
    deadline_s: float
    margin_s: float = 0.0  # training stops this long before the deadline, for the upload (upload_margin.py)


@dataclass(frozen=True)
class Refused:
    """Its inputs cannot be had (fetch failed or timed out, round model refused)."""
    reason: str
    detail: str


@dataclass(frozen=True)
class Trained:
    """The runtime answered with an update, and the update is kept for upload."""
    update_id: str


@dataclass(frozen=True)
class Failed:
    """The runtime (or keeping its update) declined the task; `aborted`: it stopped mid-training."""
    reason: str
    detail: str
    stage: str
    aborted: bool


@dataclass(frozen=True)
class Acked:
    accepted: bool


Event = Received | InputsReady | Refused | Trained | Failed | Acked


# ------------------------------------------------------------------ actions (what to do)

@dataclass(frozen=True)
class FetchInputs:
    """Get the task's model and params; answer with InputsReady or Refused."""


@dataclass(frozen=True)
class Train:
    deadline_at: float  # clock seconds: training stops between steps after this (the deadline less the margin)


@dataclass(frozen=True)
class SendDecline:
    reason: str
    detail: str
    stage: str  # "before" training started, or "during"


@dataclass(frozen=True)
class SendUpdate:
    """Publish the kept update; resend it until acknowledged."""
    update_id: str


Action = FetchInputs | Train | SendDecline | SendUpdate


def on_event(state: TaskState, event: Event) -> tuple[TaskState, tuple[Action, ...]]:
    """The next state and the actions to run; InvalidTransition if `event` cannot happen now."""
    if isinstance(event, Received):
        if not SAFE_MODEL_ID.fullmatch(event.model_id):
            return advance(state, "decline"), (
                SendDecline("bad_model_id", f"model id {event.model_id!r} is not a safe name", "before"),)
        return advance(state, "accept"), (FetchInputs(),)
    if isinstance(event, InputsReady):
        deadline_at = event.received_at + event.deadline_s
        if event.now >= deadline_at:  # it waited for its model (artifacts or parts) past its deadline
            waited = event.now - event.received_at
            return advance(state, "decline"), (SendDecline(
                "deadline_passed", f"the model came {waited:.1f} s after the task; it allowed {event.deadline_s:g} s",
                "before"),)
        train_until = deadline_at - event.margin_s
        if event.now >= train_until:  # an update trained now would land past the deadline: refused
            return advance(state, "decline"), (SendDecline(
                NO_TIME_TO_UPLOAD, f"{deadline_at - event.now:.1f} s of its {event.deadline_s:g} s left; the upload "
                f"needs about {event.margin_s:.1f} s", "before"),)
        return advance(state, "start"), (Train(train_until),)
    if isinstance(event, Refused):
        return advance(state, "decline"), (SendDecline(event.reason, event.detail, "before"),)
    if isinstance(event, Trained):
        return advance(state, "trained"), (SendUpdate(event.update_id),)
    if isinstance(event, Failed):
        after = advance(state, "abort" if event.aborted else "decline")
        return after, (SendDecline(event.reason, event.detail, event.stage),)
    if isinstance(event, Acked):
        return advance(state, "ack" if event.accepted else "rejected"), ()
    raise TypeError(f"not a task event: {event!r}")
