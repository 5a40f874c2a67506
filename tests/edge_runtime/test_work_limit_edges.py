"""The device's own limits at their edges (edge_runtime/work_limits.py, eligibility.py;
mutation4-rounds audit): a task stops at the very instant of its deadline or of the device's cap,
and names its own deadline when both have passed; the tables forget only answered tasks and keep
the latest announced model last; and 24:00 is not a time of day for a window."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.eligibility import EligibilityPolicy, parse_hhmm
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.task import TERMINAL, TaskState
from fedge.edge_runtime.work_limits import DEADLINE, TIME_LIMIT, forget_answered, remember_announced, stop_check


def test_a_task_stops_at_the_instant_of_its_deadline():
    clock = ManualClock(100.0)
    check = stop_check(clock, deadline_at=110.0, max_task_s=60.0)
    clock.advance(9.5)
    assert check() is None
    clock.advance(0.5)  # 110.0: the deadline itself
    assert check() == DEADLINE


def test_a_task_stops_at_the_instant_of_the_device_cap():
    clock = ManualClock(100.0)
    check = stop_check(clock, deadline_at=1e9, max_task_s=8.0)
    clock.advance(7.75)
    assert check() is None
    clock.advance(0.25)  # 108.0: max_task_s after the call
    assert check() == TIME_LIMIT


@pytest.mark.parametrize("past", [0.0, 5.0])
def test_when_deadline_and_cap_have_both_passed_the_deadline_is_named(past):
    clock = ManualClock(0.0)
    check = stop_check(clock, deadline_at=10.0, max_task_s=10.0)
    clock.advance(10.0 + past)
    assert check() == DEADLINE


def _plain_forget(tasks: dict, kept: int) -> dict:
    """The rule as a loop: drop answered tasks oldest first while more than `kept` remain."""
    out = dict(tasks)
    for task_id, state in tasks.items():
        if len(out) <= kept:
            break
        if state in TERMINAL:
            del out[task_id]
    return out


@pytest.mark.parametrize("states", [
    "AAAA",  # one past kept: the oldest goes
    "TAAAA",  # a task still training is never forgotten, however old
    "TUTAA",
    "TTTTT",  # nothing answered: nothing to forget
    "AAA",
])
def test_forget_answered_drops_only_answered_tasks_oldest_first(states):
    code = {"A": TaskState.ACKNOWLEDGED, "T": TaskState.TRAINING, "U": TaskState.UPLOADING}
    tasks = {f"t{i}": code[c] for i, c in enumerate(states)}
    want = _plain_forget(tasks, 3)
    forget_answered(tasks, kept=3)
    assert tasks == want and list(tasks) == list(want)


def test_a_model_announced_again_is_the_latest_and_outlives_older_ones():
    announced: dict[str, int] = {}
    for model_id, version in [("a", 1), ("b", 1), ("a", 2), ("c", 1)]:
        remember_announced(announced, model_id, version, kept=2)
    assert list(announced.items()) == [("a", 2), ("c", 1)]


@pytest.mark.parametrize("text", ["24:00", "23:60", "-1:00"])
def test_a_time_past_the_day_is_refused(text):
    with pytest.raises(ValueError):
        parse_hhmm(text)
    with pytest.raises(ConfigError, match="window"):
        EligibilityPolicy(window=f"{text}-06:00")
    assert parse_hhmm("23:59") == 23 * 60 + 59
