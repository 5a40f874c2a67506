"""The round table at its documented edges (coordinator/rounds.py): a later stage's limits and
quorum at 0 and 1, the later stage's target capped at the devices it asks, a Stopped after the
round closed, and the exact reason a one-stage round and a later stage give when they are
abandoned. Each case is worked by hand from the module docstring (mutation4-rounds audit)."""

from __future__ import annotations

import pytest

from fedge.coordinator.rounds import (
    Abandon,
    Declined,
    Limits,
    Phase,
    Replied,
    Stage,
    Stopped,
    Tick,
    on_event,
    start,
    sync_round,
    with_quorum,
)

TWO = (Stage("commit"), Stage("reveal"))
DEVICES = ("d0", "d1", "d2", "d3", "d4")


def _feed(m, *events):
    for event in events:
        m, _ = on_event(m, event)
    return m


@pytest.mark.parametrize("quorum", [0, -1])
def test_a_later_stage_with_a_quorum_below_1_is_refused_and_1_is_accepted(quorum):
    with pytest.raises(ValueError, match="reveal"):
        start(1, TWO, (Limits(3, 2, 10.0), Limits(3, quorum, 10.0)), DEVICES, 0.0)
    m, _ = start(1, TWO, (Limits(3, 2, 10.0), Limits(3, 1, 10.0)), DEVICES, 0.0)
    assert m.limits[1].quorum == 1


def test_with_quorum_refuses_0_and_accepts_1():
    m, _ = start(1, TWO, (Limits(3, 2, 10.0), Limits(3, 2, 10.0)), DEVICES, 0.0)
    with pytest.raises(ValueError, match="at least 1"):
        with_quorum(m, 1, 0)
    assert with_quorum(m, 1, 1).limits[1].quorum == 1


def test_a_later_stage_asks_for_no_more_replies_than_devices_it_asks():
    # Stage 1: three of five answer by the deadline (quorum 2). Stage 2 was planned with target
    # 5; it asks those three, so its target becomes 3, and the third reply reaches it.
    m, _ = start(1, TWO, (Limits(5, 2, 10.0), Limits(5, 2, 10.0)), DEVICES, 0.0)
    m = _feed(m, Replied("d0"), Replied("d1"), Replied("d2"), Tick(10.0))
    assert (m.stage, m.asked, m.target, m.quorum) == (1, ("d0", "d1", "d2"), 3, 2)
    m = _feed(m, Replied("d2"), Replied("d0"))
    assert m.phase == Phase.TRAINING  # 2 < target 3, and d1 still owes a reply
    m = _feed(m, Replied("d1"))
    assert (m.phase, m.why) == (Phase.AGGREGATING, "3 reports")  # the target, not "all answered"


def test_a_stopped_after_the_round_closed_changes_nothing():
    m = _feed(sync_round(7, DEVICES, 3, 2, 100.0), Replied("d0"), Tick(100.0))
    assert m.phase == Phase.ABANDONED
    assert on_event(m, Stopped("coordinator stopping")) == (m, [])
    assert on_event(m, Tick(200.0)) == (m, [Abandon(m.why)])  # the first reason, again


def test_a_one_stage_round_is_abandoned_with_its_reason_and_no_stage_name():
    m = _feed(sync_round(7, DEVICES, 3, 2, 100.0), Replied("d0"), Tick(100.0))
    assert m.why == "deadline with 1 < quorum 2 reports"
    m = sync_round(7, DEVICES[:3], 3, 2, 100.0)
    m = _feed(m, Declined("d0", "battery_low"), Declined("d1", "too_hot"))
    assert m.why == "quorum 2 out of reach (2 declined)"


def test_a_later_stage_names_itself_when_it_is_abandoned():
    m, _ = start(1, TWO, (Limits(5, 2, 10.0), Limits(5, 2, 10.0)), DEVICES, 0.0)
    m = _feed(m, Replied("d0"), Replied("d1"), Tick(10.0), Replied("d0"), Tick(20.0))
    assert (m.phase, m.why) == (Phase.ABANDONED, "deadline with 1 < quorum 2 reports at the reveal stage")
