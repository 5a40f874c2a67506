"""The sync round's transition table: every way a round closes, and every input it must refuse."""

from __future__ import annotations

import pytest

from fedge.coordinator.rounds import (
    Abandon,
    Aggregate,
    Commit,
    Committed,
    Declined,
    Pace,
    Phase,
    Replied,
    RoundMachine,
    Stopped,
    Tick,
    on_event,
    sync_round,
)

DEVICES = ("d0", "d1", "d2", "d3", "d4")


def _machine(target=3, quorum=2, selected=DEVICES, deadline=100.0) -> RoundMachine:
    return sync_round(7, tuple(selected), target, quorum, deadline)


def _report(m: RoundMachine, device: str) -> RoundMachine:
    m, actions = on_event(m, Replied(device))
    assert actions == []  # a reply only counts; a Tick closes
    return m


def _decline(m: RoundMachine, device: str, reason: str) -> RoundMachine:
    m, actions = on_event(m, Declined(device, reason))
    assert actions == [Pace(device, "declined", reason)]
    return m


def _tick(m: RoundMachine, now: float) -> RoundMachine:
    return on_event(m, Tick(now))[0]


def _committed(m: RoundMachine) -> RoundMachine:
    return on_event(m, Committed())[0]


def test_closes_as_soon_as_target_reports_arrive():
    m = _machine(target=3, quorum=2)
    assert (m := _report(m, "d0")).phase == Phase.TRAINING
    assert (m := _report(m, "d1")).phase == Phase.TRAINING
    assert (m := _report(m, "d2")).phase == Phase.AGGREGATING
    assert m.reported == ["d0", "d1", "d2"]
    assert on_event(m, Tick(0.0)) == (m, [Aggregate(), Commit()])  # closed before its deadline
    m = _committed(m)
    assert m.phase == Phase.COMMITTED


def test_late_report_after_target_is_refused():
    m = _machine(target=2, quorum=1)
    m = _report(_report(m, "d0"), "d1")
    with pytest.raises(ValueError):
        _report(m, "d2")
    assert m.reported == ["d0", "d1"]


def test_tick_before_deadline_changes_nothing():
    m = _report(_machine(), "d0")
    assert on_event(m, Tick(99.999)) == (m, [])
    assert m.phase == Phase.TRAINING


def test_deadline_with_quorum_commits():
    m = _machine(target=4, quorum=2)
    m = _report(_report(m, "d3"), "d1")
    m, actions = on_event(m, Tick(100.0))
    assert m.phase == Phase.AGGREGATING and actions == [Aggregate(), Commit()]
    m = _committed(m)
    assert m.phase == Phase.COMMITTED


def test_deadline_below_quorum_abandons():
    m = _report(_machine(target=4, quorum=2), "d3")
    m, actions = on_event(m, Tick(150.0))
    assert m.phase == Phase.ABANDONED and actions == [Abandon(m.why)]
    assert "quorum" in m.why
    with pytest.raises(ValueError):
        _committed(m)


def test_deadline_with_no_reports_abandons():
    assert _tick(_machine(quorum=1, target=1), 100.0).phase == Phase.ABANDONED


def test_declines_that_make_quorum_unreachable_abandon_before_the_deadline():
    m = _machine(target=3, quorum=3)  # 5 selected: 3 declines leave 2 < 3 possible
    assert (m := _decline(m, "d0", "battery_low")).phase == Phase.TRAINING
    assert (m := _decline(m, "d1", "metered_link")).phase == Phase.TRAINING
    assert (m := _decline(m, "d2", "battery_low")).phase == Phase.ABANDONED
    assert m.declined == {"d0": "battery_low", "d1": "metered_link", "d2": "battery_low"}
    assert m.outstanding == 2
    assert on_event(m, Tick(0.0))[1] == [Abandon(m.why)]  # the shell closes it at its next tick


def test_all_declines_abandon():
    m = _machine(target=2, quorum=1, selected=("a", "b"))
    m = _decline(m, "a", "battery_low")
    assert m.phase == Phase.TRAINING
    assert _decline(m, "b", "battery_low").phase == Phase.ABANDONED


def test_everyone_answered_with_quorum_goes_to_aggregating_without_waiting():
    m = _machine(target=3, quorum=1, selected=("a", "b", "c"))
    m = _decline(_report(m, "a"), "b", "battery_low")
    assert _decline(m, "c", "thermal").phase == Phase.AGGREGATING


@pytest.mark.parametrize("order", ["dRR", "RdR", "RRd"])
def test_everyone_answered_goes_to_aggregating_whatever_the_order(order):
    """A decline before the last reply once left the round to its deadline (only a Declined
    asked whether every selected device had answered): the round's end hung on arrival order."""
    m, replies = _machine(target=3, quorum=2, selected=("a", "b", "c")), iter(("b", "c"))
    for step in order:
        assert m.phase == Phase.TRAINING
        m = _decline(m, "a", "battery_low") if step == "d" else _report(m, next(replies))
    assert m.phase == Phase.AGGREGATING and m.reported == ["b", "c"]
    assert on_event(m, Tick(0.0))[1] == [Aggregate(), Commit()]  # long before its deadline (100)


def test_decline_after_report_or_twice_is_ignored():
    m = _report(_machine(target=3, quorum=2), "d0")
    m = _decline(m, "d0", "battery_low")
    m = _decline(m, "d1", "battery_low")
    m = _decline(m, "d1", "thermal")
    assert m.declined == {"d1": "battery_low"}
    assert m.reported == ["d0"]


@pytest.mark.parametrize("device", ["stranger", ""])
def test_report_from_unselected_device_is_refused(device):
    m = _machine()
    with pytest.raises(ValueError):
        _report(m, device)
    assert m.reported == []


def test_duplicate_report_is_refused():
    m = _report(_machine(), "d0")
    with pytest.raises(ValueError):
        _report(m, "d0")
    assert m.reported == ["d0"]


def test_report_after_decline_is_refused():
    m = _decline(_machine(), "d0", "battery_low")
    with pytest.raises(ValueError):
        _report(m, "d0")


def test_report_after_abandon_is_refused():
    m = _tick(_machine(), 1000.0)
    assert m.phase == Phase.ABANDONED
    with pytest.raises(ValueError):
        _report(m, "d0")


def test_commit_only_from_aggregating():
    m = _machine()
    with pytest.raises(ValueError):
        _committed(m)  # training
    m, actions = on_event(m, Stopped("operator stop"))
    assert m.phase == Phase.ABANDONED and m.why == "operator stop" and actions == [Abandon("operator stop")]
    with pytest.raises(ValueError):
        _committed(m)  # abandoned

    m = _committed(_report(_machine(target=1, quorum=1), "d0"))
    with pytest.raises(ValueError):
        _committed(m)  # committed twice


def test_tick_after_close_keeps_the_phase():
    m = _report(_machine(target=1, quorum=1), "d0")
    assert _tick(m, 1e9).phase == Phase.AGGREGATING


def test_the_machine_is_a_value():
    m = _machine()
    after = _report(m, "d0")
    assert m.reported == [] and after.reported == ["d0"]  # the old state is untouched
    with pytest.raises(AttributeError):
        m.phase = Phase.ABANDONED  # frozen


@pytest.mark.parametrize(
    "target, quorum, selected",
    [
        (3, 0, DEVICES),  # quorum < 1
        (2, 3, DEVICES),  # quorum > target
        (6, 2, DEVICES),  # target > selected
        (1, 1, ()),  # nobody selected
        (0, 0, DEVICES),
    ],
)
def test_invalid_constructor_args(target, quorum, selected):
    with pytest.raises(ValueError):
        _machine(target=target, quorum=quorum, selected=selected)


def test_boundary_constructor_args_are_accepted():
    m = _machine(target=5, quorum=5)
    assert m.phase == Phase.TRAINING and m.outstanding == 5
