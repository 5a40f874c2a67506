"""How long a device lets one task train: until the task's deadline, and never longer than
its own cap.

A task's deadline_s is the coordinator's word, and the wire allows up to 1e9 s (31 years);
its epochs go to 1e6 and its batch size down to 1. A TrainTask with all three kept a device
training for as long as it ran: 40 million steps of the tiny test model, weeks of a Pi's CPU
on a real one. The cap (DeviceAgent's max_task_s) stops such a task between steps, and the
Decline (`aborted:time_limit`) tells the coordinator why.
"""

from __future__ import annotations

from collections.abc import Callable

DEADLINE = "deadline"  # abort cause: the task's own deadline passed
TIME_LIMIT = "time_limit"  # abort cause: it trained for the device's max_task_s


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
