"""The constant-guess warning (tools/simulate/report.py) at its documented limits: within a point
of the most common test label's share warns, past it does not, and a test set of one label
(share over 0.99) never does (found by the mutation7-simfleet audit)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedge.tools.simulate.report import constant_guess


def _result(accuracy: float, share: float, committed: bool = True):
    return SimpleNamespace(summary={"final": {"final_global_accuracy": accuracy}},
                           config={"data": {"most_common_test_share": share}, "standardize": False},
                           rounds=[{"committed": committed}])


@pytest.mark.parametrize("accuracy, warns", [(0.30, True), (0.305, True), (0.315, False), (0.35, False)])
def test_warns_within_one_point_of_the_most_common_share(accuracy, warns):
    assert (constant_guess(_result(accuracy, 0.30)) is not None) == warns


def test_a_test_set_of_one_label_has_nothing_to_learn_and_is_not_warned_about():
    assert constant_guess(_result(1.0, 1.0)) is None
    assert constant_guess(_result(0.99, 0.995)) is None
    assert constant_guess(_result(0.99, 0.99)) is not None  # 0.99 itself still warns


def test_a_run_that_committed_nothing_is_not_warned_about():
    assert constant_guess(_result(0.1, 0.3, committed=False)) is None
