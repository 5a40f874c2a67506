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


def test_a_round_that_no_device_scored_reports_no_spread_and_prints_a_dash():
    """Every device declining the evaluation (none eligible: a profile's night, a flaky link)
    leaves no personalized accuracy; _spread([]) raised ValueError from np.min, which would end
    the whole run on one round's evaluation. Now the three fields are None, as the mean loss
    already was, and the per-round line and the summary print '-' for them."""
    from types import SimpleNamespace

    from fedge.tools.simulate.report import format_row, format_summary

    row = _spread([])
    assert row == {"personalized_accuracy_mean": None, "personalized_accuracy_min": None,
                   "personalized_accuracy_p10": None}
    line = format_row({"round": 3, "train_loss": 0.5, "global_loss": None, "global_accuracy": 0.8, **row,
                       "bytes_up": 2048, "bytes_up_dense": 4096, "bytes_down": 1024, "seconds": 1.0,
                       "committed": True})
    assert line.split()[4:6] == ["-", "-"] and "0.800" in line
    final = {"final_global_accuracy": 0.8, "final_personalized_accuracy_mean": None,
             "final_personalized_accuracy_min": None, "total_bytes_up": 1, "total_bytes_up_dense": 4,
             "uplink_compression": 4.0}
    text = format_summary(SimpleNamespace(summary={"final": final}, config={}, new_devices=None,
                                          baselines={"local_only": {"epochs": 2, "accuracy_mean": 0.9,
                                                                    "accuracy_min": 0.7}}))
    assert "personalized mean - (each device's own model" in text and "worst device -)" in text
    assert "training alone matched or beat" not in text  # nothing to compare with
