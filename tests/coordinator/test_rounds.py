"""RoundMachine: every way a round closes, and every input it must refuse."""

from __future__ import annotations

import pytest

from fedge.coordinator.rounds import Phase, RoundMachine

DEVICES = ("d0", "d1", "d2", "d3", "d4")


def _machine(target=3, quorum=2, selected=DEVICES, deadline=100.0) -> RoundMachine:
    return RoundMachine(round_id=7, selected=tuple(selected), target=target, quorum=quorum, deadline=deadline)


def test_closes_as_soon_as_target_reports_arrive():
    m = _machine(target=3, quorum=2)
    assert m.on_report("d0") == Phase.TRAINING
    assert m.on_report("d1") == Phase.TRAINING
    assert m.on_report("d2") == Phase.AGGREGATING
    assert m.reported == ["d0", "d1", "d2"]
    m.committed()
    assert m.phase == Phase.COMMITTED


def test_late_report_after_target_is_refused():
    m = _machine(target=2, quorum=1)
    m.on_report("d0")
    m.on_report("d1")
    with pytest.raises(ValueError):
        m.on_report("d2")
    assert m.reported == ["d0", "d1"]


def test_tick_before_deadline_changes_nothing():
    m = _machine()
    m.on_report("d0")
    assert m.on_tick(99.999) == Phase.TRAINING


def test_deadline_with_quorum_commits():
    m = _machine(target=4, quorum=2)
    m.on_report("d3")
    m.on_report("d1")
    assert m.on_tick(100.0) == Phase.AGGREGATING
    m.committed()
    assert m.phase == Phase.COMMITTED


def test_deadline_below_quorum_abandons():
    m = _machine(target=4, quorum=2)
    m.on_report("d3")
    assert m.on_tick(150.0) == Phase.ABANDONED
    assert "quorum" in m.why
    with pytest.raises(ValueError):
        m.committed()


def test_deadline_with_no_reports_abandons():
    assert _machine(quorum=1, target=1).on_tick(100.0) == Phase.ABANDONED


def test_declines_that_make_quorum_unreachable_abandon_before_the_deadline():
    m = _machine(target=3, quorum=3)  # 5 selected: 3 declines leave 2 < 3 possible
    assert m.on_decline("d0", "battery_low") == Phase.TRAINING
    assert m.on_decline("d1", "metered_link") == Phase.TRAINING
    assert m.on_decline("d2", "battery_low") == Phase.ABANDONED
    assert m.declined == {"d0": "battery_low", "d1": "metered_link", "d2": "battery_low"}
    assert m.outstanding == 2


def test_all_declines_abandon():
    m = _machine(target=2, quorum=1, selected=("a", "b"))
    m.on_decline("a", "battery_low")
    assert m.phase == Phase.TRAINING
    assert m.on_decline("b", "battery_low") == Phase.ABANDONED


def test_everyone_answered_with_quorum_goes_to_aggregating_without_waiting():
    m = _machine(target=3, quorum=1, selected=("a", "b", "c"))
    m.on_report("a")
    m.on_decline("b", "battery_low")
    assert m.on_decline("c", "thermal") == Phase.AGGREGATING


def test_decline_after_report_or_twice_is_ignored():
    m = _machine(target=3, quorum=2)
    m.on_report("d0")
    m.on_decline("d0", "battery_low")
    m.on_decline("d1", "battery_low")
    m.on_decline("d1", "thermal")
    assert m.declined == {"d1": "battery_low"}
    assert m.reported == ["d0"]


@pytest.mark.parametrize("device", ["stranger", ""])
def test_report_from_unselected_device_is_refused(device):
    m = _machine()
    with pytest.raises(ValueError):
        m.on_report(device)
    assert m.reported == []


def test_duplicate_report_is_refused():
    m = _machine()
    m.on_report("d0")
    with pytest.raises(ValueError):
        m.on_report("d0")
    assert m.reported == ["d0"]


def test_report_after_decline_is_refused():
    m = _machine()
    m.on_decline("d0", "battery_low")
    with pytest.raises(ValueError):
        m.on_report("d0")


def test_report_after_abandon_is_refused():
    m = _machine()
    m.on_tick(1000.0)
    assert m.phase == Phase.ABANDONED
    with pytest.raises(ValueError):
        m.on_report("d0")


def test_commit_only_from_aggregating():
    m = _machine()
    with pytest.raises(ValueError):
        m.committed()  # training
    m.abandon("operator stop")
    assert m.phase == Phase.ABANDONED and m.why == "operator stop"
    with pytest.raises(ValueError):
        m.committed()  # abandoned

    m = _machine(target=1, quorum=1)
    m.on_report("d0")
    m.committed()
    with pytest.raises(ValueError):
        m.committed()  # committed twice


def test_tick_after_close_keeps_the_phase():
    m = _machine(target=1, quorum=1)
    m.on_report("d0")
    assert m.on_tick(1e9) == Phase.AGGREGATING


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
