"""When a simulated straggler may answer (tools/simulate/stragglers.py), as hand cases: not while
the on-time devices can still close the round, yes once they cannot (declines and vanished
devices leave it short), and yes once the round, or a later one, has closed (found by the
mutation7-simfleet audit)."""

from __future__ import annotations

from fedge.tools.simulate.stragglers import StragglerPlan, choose_stragglers

SELECTED = ("a", "b", "c")  # 3 asked, 2 wanted: one straggler


def _plan(round_id: int = 1) -> tuple[StragglerPlan, list[str]]:
    plan = StragglerPlan(seed=0)
    late = plan.begin(round_id, SELECTED, 2)
    assert len(late) == 1
    return plan, sorted(set(SELECTED) - late)


def test_a_straggler_waits_while_the_on_time_devices_can_close_the_round():
    plan, (first, second) = _plan()
    assert not plan.may_answer(1)  # nobody answered yet
    plan.answered(1, first, reported=True)
    assert not plan.may_answer(1)
    plan.answered(1, second, reported=True)
    assert not plan.may_answer(1)  # 2 reports of 2 wanted: the round closes without it
    plan.closed(1)
    assert plan.may_answer(1)  # too late now, as a real straggler would be


def test_a_straggler_fills_in_when_a_decline_or_a_vanished_device_leaves_the_round_short():
    plan, (first, second) = _plan()
    plan.answered(1, first, reported=True)
    plan.answered(1, second, reported=False)  # a decline: 1 report of 2
    assert plan.may_answer(1)

    plan, (first, second) = _plan()
    plan.answered(1, first, reported=True)
    plan.gone(second)  # vanished: it will answer nothing
    assert plan.may_answer(1)
    plan.back(second)
    assert not plan.may_answer(1)


def test_closing_a_round_closes_it_and_every_earlier_one_not_a_later_one():
    plan = StragglerPlan(seed=0)
    for rid in (1, 2, 3):
        plan.begin(rid, SELECTED, 2)
    plan.closed(2)
    assert plan.may_answer(1) and plan.may_answer(2) and not plan.may_answer(3)


def test_stragglers_are_the_extra_devices_drawn_per_round():
    chosen = {r: choose_stragglers(("d0", "d1", "d2", "d3", "d4"), 3, seed=7, round_id=r) for r in range(20)}
    assert all(len(s) == 2 and s <= {"d0", "d1", "d2", "d3", "d4"} for s in chosen.values())
    assert chosen[5] == choose_stragglers(("d4", "d3", "d2", "d1", "d0"), 3, seed=7, round_id=5)  # order-free
    assert len(set(chosen.values())) > 1  # not the same devices every round
    assert choose_stragglers(("d0", "d1"), 2, seed=7, round_id=1) == frozenset()
