"""What a coordinator can make a device do, bounded by the device: how long one task trains,
how many updates wait for an Ack, how many tasks it remembers.

Time: until the task's deadline, and never longer than the device's own cap.

A task's deadline_s is the coordinator's word, and the wire allows up to 1e9 s (31 years);
its epochs go to 1e6 and its batch size down to 1. A TrainTask with all three kept a device
training for as long as it ran: 40 million steps of the tiny test model, weeks of a Pi's CPU
on a real one. The cap (DeviceAgent's max_task_s) stops such a task between steps, and the
Decline (`aborted:time_limit`) tells the coordinator why.
"""

from __future__ import annotations

from collections.abc import Callable

from .journal import SEEN_TASKS_KEPT
from .task import TERMINAL, TaskState

DEADLINE = "deadline"  # abort cause: the task's own deadline passed
TIME_LIMIT = "time_limit"  # abort cause: it trained for the device's max_task_s
# Decline reason: too many of this device's updates wait for an Ack (DeviceAgent's max_pending).
# A coordinator that sent task after task and acknowledged none made a device train each and
# keep every update, in memory and on disk, for pending_max_age_s (a week): one file per task,
# up to max_message_bytes each. Not permanent (coordinator/backoff.py): Acks clear it.
UPLINK_BACKLOG = "uplink_backlog"
# Tasks DeviceAgent.tasks remembers, at most (answered ones go first); a copy of a forgotten one
# is still known to the journal (seen_tasks.py) and answered again, never retrained.
TASKS_KEPT = 4 * SEEN_TASKS_KEPT
# Model ids whose latest announced version the device remembers (DeviceStore.keep_global reads
# it), the latest announced last. A coordinator announces one model at a time; the table kept
# every model id any Announcement named, for as long as the device ran.
ANNOUNCED_KEPT = 16
# Neighbours one secure round may give this device, at most (secagg_participant.py declines a
# KeyDirectory past it as secagg_too_many_neighbours). Sharing two seeds among k neighbours with
# a threshold of about k/2 costs O(k^2): 0.9 s at k = 1,024 and 2.3 s at 2,048 on the 2 shared
# cores fedge is tested on (more on a Pi), and the wire allows a complete graph of 100,000 (days).
# The graphs fedge chooses stay far below: k = 222 at n = 1,000, 508 with 5% colluders (graph.py).
SECAGG_NEIGHBOURS = 1024


# Seconds an evaluation may spend refitting the device's private head (head_refit.py) before it
# scores the head it kept instead: half of the coordinator's default evaluation deadline_s (120 s,
# coordinator/evaluation.py), which the EvalTask does not carry, so the answer still has time to
# embed the test split, score and reach the coordinator. The agent takes the smaller of this
# and its max_task_s (no refit trains longer than a task may).
EVAL_REFIT_S = 60.0


def stop_check(clock, deadline_at: float, max_task_s: float) -> Callable[[], str | None]:
    """Asked between training steps, from now on: the cause to stop, or None to go on.
    deadline_at is a time on `clock`; max_task_s counts from this call (seconds)."""
    cap_at = clock.now() + max_task_s

    def check() -> str | None:
        now = clock.now()
        if now >= deadline_at:
            return DEADLINE
        return TIME_LIMIT if now >= cap_at else None

    return check


def forget_answered(tasks: dict[str, TaskState], kept: int = TASKS_KEPT) -> None:
    """Drop the oldest answered tasks past `kept` (the dict is in arrival order). The agent's
    table grew by one entry per task id for as long as the device ran, and ids are cheap to send."""
    if len(tasks) > kept:
        answered = [task_id for task_id, state in tasks.items() if state in TERMINAL]
        for task_id in answered[:len(tasks) - kept]:
            del tasks[task_id]


def remember_announced(announced: dict[str, int], model_id: str, version: int, kept: int = ANNOUNCED_KEPT) -> None:
    """Record `model_id`'s announced version, forgetting the models announced longest ago past `kept`."""
    announced.pop(model_id, None)
    announced[model_id] = version
    while len(announced) > kept:
        del announced[next(iter(announced))]
