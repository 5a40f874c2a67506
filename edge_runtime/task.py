r"""A device task's life as a transition table, free of I/O.

    idle --task--> training --trained--> uploading --ack--> acknowledged
      |                |                      \--rejected--> rejected
      |                \--abort--> aborted
      \--decline--> declined
"""

from __future__ import annotations

from enum import Enum


class TaskState(str, Enum):
    IDLE = "idle"
    TRAINING = "training"
    UPLOADING = "uploading"
    ACKNOWLEDGED = "acknowledged"
    REJECTED = "rejected"
    DECLINED = "declined"
    ABORTED = "aborted"


TRANSITIONS: dict[tuple[TaskState, str], TaskState] = {
    (TaskState.IDLE, "task"): TaskState.TRAINING,
    (TaskState.IDLE, "decline"): TaskState.DECLINED,
    (TaskState.TRAINING, "decline"): TaskState.DECLINED,
    (TaskState.TRAINING, "abort"): TaskState.ABORTED,
    (TaskState.TRAINING, "trained"): TaskState.UPLOADING,
    (TaskState.UPLOADING, "ack"): TaskState.ACKNOWLEDGED,
    (TaskState.UPLOADING, "rejected"): TaskState.REJECTED,
}
TERMINAL = {TaskState.ACKNOWLEDGED, TaskState.REJECTED, TaskState.DECLINED, TaskState.ABORTED}


class InvalidTransition(ValueError):
    pass


def advance(state: TaskState, event: str) -> TaskState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"task cannot go from {state.value} on {event!r}") from None
