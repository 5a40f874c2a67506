"""Edges of what `fedge simulate` reports per round (tools/simulate/scoring.py) that no fleet run
pins down: the personalized spread against a plain loop, the choice between a device's personal
and global score, and how many devices count as "the smallest" (found by the mutation7-simfleet
audit)."""

from __future__ import annotations

import math

import pytest

from fedge.tools.simulate.scoring import _personal, _spread, smallest_devices


def _p10_by_hand(values: list[float]) -> float:
    """The 10th percentile as numpy's default (linear) defines it, as a plain loop: rank
    0.1 (n - 1) in the sorted values, interpolated between its two neighbours."""
    ordered = sorted(values)
    rank = 0.1 * (len(ordered) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (rank - lo) * (ordered[hi] - ordered[lo])


@pytest.mark.parametrize("values", [[0.9, 0.5, 0.7, 1.0, 0.6, 0.8], [0.25, 1.0], [0.4] * 3 + [0.9] * 8,
                                    [i / 31 for i in range(31, 0, -1)]])
def test_spread_is_the_mean_worst_device_and_tenth_percentile(values):
    row = _spread(values)
    assert row["personalized_accuracy_mean"] == pytest.approx(sum(values) / len(values))
    assert row["personalized_accuracy_min"] == min(values)
    assert row["personalized_accuracy_p10"] == pytest.approx(_p10_by_hand(values))


def test_a_device_scores_its_personal_model_and_one_without_test_examples_scores_nothing():
    devices = [
        {"examples": 5, "accuracy_personal": 0.8, "accuracy_global": 0.2},  # its private head
        {"examples": 5, "accuracy_personal": None, "accuracy_global": 0.6},  # no personal head: the global
        {"examples": 0, "accuracy_personal": 0.0, "accuracy_global": 0.0},  # nothing to score: left out
        {"examples": 4, "accuracy_personal": None, "accuracy_global": None},  # scored nothing: left out
    ]
    assert _personal(devices, "accuracy") == [0.8, 0.6]


@pytest.mark.parametrize("n, chosen", [(9, 1), (10, 1), (15, 1), (19, 1), (20, 2), (29, 2)])
def test_the_smallest_devices_are_the_tenth_rounded_down_and_at_least_one(n, chosen):
    """floor(n / 10), at least one: 15 devices give 1 (round() would give 2), 19 still 1."""
    sizes = {f"d{i:02d}": 10 + i for i in range(n)}  # d00 the smallest
    per_device = {d: {"examples": 3, "accuracy_global": i / n, "accuracy_personal": None}
                  for i, d in enumerate(sizes)}
    row = smallest_devices(per_device, sizes)
    assert row["smallest_devices"] == chosen
    assert row["smallest_devices_max_examples"] == 10 + chosen - 1  # the largest of those chosen
    assert row["smallest_devices_global_accuracy"] == pytest.approx(sum(i / n for i in range(chosen)) / chosen)
