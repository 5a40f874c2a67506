"""Task deadlines on the device: a task whose model arrives after its deadline is declined
untrained, and a straggler stops training at its deadline instead of sending an update the
coordinator would refuse as stale. The agent's clock decides (a ManualClock here)."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.protocol import model_part_topic
from fedge.edge_runtime.task import TaskState
from tests.coordinator.fleet import make_fleet
from tests.tiny_model import build_tiny_model

SIZES = (10, 20, 35)
PART = 256  # bytes: the tiny model's round model spans several parts


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_task_whose_model_comes_after_its_deadline_is_declined_untrained(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, model_part_bytes=PART, round_deadline_s=15.0)
    assert fleet.coordinator.begin_round()
    parts = fleet.coordinator.round.model_parts
    for topic in fleet.retained_topics("fedge/v1/model/"):
        fleet.spy.publish(topic, b"", retain=True)
    fleet.drain()  # the devices hold their tasks and wait for the parts
    fleet.clock.advance(20.0)
    for index, part in enumerate(parts):  # the parts come back, too late
        fleet.spy.publish(model_part_topic(index), part, retain=True)
    fleet.drain()
    assert fleet.coordinator.declines["deadline_passed"] == len(SIZES)
    assert not fleet.updates()
    assert all(set(a.tasks.values()) == {TaskState.DECLINED} and not a.pending for a in fleet.agents)


def test_a_straggler_stops_training_at_its_deadline(model, tmp_path):
    """The agent's clock runs on while a device trains (each step takes 4 s here): past the
    task's deadline the device aborts and says so, instead of sending an update nobody takes."""
    clock_box = {}

    def slow_step():
        if "clock" in clock_box:  # armed once the round begins; check-ins are instant
            clock_box["clock"].advance(4.0)
        return None

    fleet = make_fleet(model, tmp_path, sizes=(40,), eligibility=slow_step, round_deadline_s=10.0, min_reports=1)
    clock_box["clock"] = fleet.clock
    assert fleet.coordinator.begin_round()
    fleet.drain()  # 40 examples, batch 8: 10 steps, 40 s of training for a 10 s deadline
    assert fleet.coordinator.declines["aborted:deadline"] == 1
    assert not fleet.updates()


def test_a_round_deadline_past_the_devices_own_task_cap_is_warned_of(caplog):
    """A fedge device stops any task after its [agent] max_task_s (3600 s by default), which the
    coordinator cannot see: a round deadline of 2 hours would have such tasks aborted (review)."""
    import logging

    from fedge.coordinator.service import warn_past_device_cap
    from fedge.edge_runtime.device_config import AgentConfig

    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        warn_past_device_cap(AgentConfig.max_task_s)
        assert caplog.records == []
        warn_past_device_cap(7200.0)
    assert len(caplog.records) == 1 and "max_task_s (3600 s" in caplog.records[0].getMessage()


@pytest.mark.parametrize("deadline_s, answered", [(11.5, "aborted:deadline"), (13.0, "update")])
def test_a_sync_task_stops_the_upload_margin_before_its_deadline(model, tmp_path, deadline_s, answered):
    """The upload margin in sync mode (edge_runtime/upload_margin.py): the eligibility check before
    the task and each of its 10 steps take 1 s, so training ends at 11 s; the margin is about 1 s
    (the default latency; the tiny model's update is 413 bytes). With 11.5 s the device stops at
    10.5 s and declines (before the margin it sent its update at 11 s, 0.5 s from the round's
    deadline: less than the link is assumed to need). With 13 s its update, sent at 11 s, counts."""
    clock_box = {}

    def a_second_per_step():
        if "clock" in clock_box:
            clock_box["clock"].advance(1.0)
        return None

    fleet = make_fleet(model, tmp_path, sizes=(40,), eligibility=a_second_per_step, round_deadline_s=deadline_s,
                       min_reports=1)
    clock_box["clock"] = fleet.clock
    assert fleet.coordinator.begin_round()
    fleet.drain()
    if answered == "update":
        assert [u.metrics["steps"] for u in fleet.updates()] == [10.0] and not fleet.coordinator.declines
        assert fleet.clock.now() <= deadline_s - 1.0  # it left the margin for the upload
    else:
        assert fleet.coordinator.declines[answered] == 1 and not fleet.updates()
