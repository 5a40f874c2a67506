"""`fedge coordinator privacy`'s "rounds left" when more rounds fit than rounds_left searches
(coordinator/dp/report.py): said as "at least", not as the count."""

from __future__ import annotations

import fedge.coordinator.dp.report as report_module
from fedge.coordinator.dp.report import privacy_report, render
from fedge.coordinator.dp.round import RoundPlan
from tests.coordinator.test_dp import _direct


def _ledger(rounds: int, target: float) -> list[tuple[int, RoundPlan]]:
    plan = RoundPlan(1000, 100, 1.0, 0.5, 100, 1e-5, target, 0.0, "poisson", "rdp")
    return [(r, plan) for r in range(1, rounds + 1)]


def test_rounds_left_past_the_search_limit_is_reported_as_at_least(monkeypatch):
    """The search stops at its limit (100,000 rounds, 10 here): a budget that a calibration for a
    million rounds leaves open was reported as exactly 100000 rounds left. Oracle: dp-accounting
    directly says 11 more rounds fit, so 10 is a floor, not the count."""
    monkeypatch.setattr(report_module, "ROUNDS_LEFT_LIMIT", 10)
    assert _direct("poisson", 1000, 100, 1.0, 2 + 11, 1e-5) <= 8.0
    report = privacy_report(_ledger(2, 8.0))
    assert report["rounds_left"] == 10 and report["rounds_left_at_least"] is True
    assert "rounds left: at least 10 at" in render(report)


def test_rounds_left_within_the_search_limit_is_the_count():
    """Oracle: the first round dp-accounting refuses at target 3 (round 6, as test_dp_poisson)."""
    refused = next(r for r in range(1, 50) if _direct("poisson", 1000, 100, 1.0, r, 1e-5) > 3.0)
    report = privacy_report(_ledger(2, 3.0))
    assert report["rounds_left"] == refused - 3 and report["rounds_left_at_least"] is False
    assert f"rounds left: {refused - 3} at" in render(report)
