"""The heterogeneity benchmark's targets exactly at their documented limits, and the rows the
docstrings leave out, against the rule read as a plain comparison (hetero_metrics.py)."""

from __future__ import annotations

import pytest

from fedge.tools.bench import hetero_metrics as m


def test_final_accuracy_is_the_mean_of_the_scored_rounds_of_the_window():
    for curve in ([0.2, None, 0.6, None], [0.1, 0.4, None, 0.8], [None, None, None, 0.3], [0.5, None, None]):
        window = [v for v in curve[-3:] if v is not None]
        assert m.final_accuracy(curve, 3) == pytest.approx(sum(window) / len(window))
    assert m.final_accuracy([0.9, None, None, None], 3) is None


def _pers_cell(mean, worst, global_acc=0.5):
    return {"dataset": "d", "partition": "dirichlet-0.1", "algorithm": "fedavg", "personalization": True,
            "personalized_accuracy_mean": mean, "personalized_accuracy_min": worst,
            "final_global_accuracy": global_acc}


def test_personalized_target_is_met_at_exactly_two_points_over_local_only_and_a_worst_of_85():
    local = 0.75
    base = {"dirichlet-0.1": {"local_only": {"accuracy_mean": local}}}
    t = m.target_personalized([_pers_cell(local + 0.02, 0.85)], [], base, "d")
    assert t["checks"] == {"vs_local": True, "vs_global": True, "worst": True} and t["met"] is True
    below = m.target_personalized([_pers_cell(local + 0.0199, 0.85)], [], base, "d")
    assert below["checks"]["vs_local"] is False and below["met"] is False


def test_the_none_mode_is_never_a_personalization_candidate():
    base = {"dirichlet-0.1": {"local_only": {"accuracy_mean": 0.5}}}
    weak = _pers_cell(0.53, 0.6, global_acc=0.3)  # vs_local and vs_global, not worst
    none = {"mode": "none", "personalized_accuracy_mean": 0.99, "personalized_accuracy_min": 0.99,
            "final_global_accuracy": 0.3, "devices": None}
    t = m.target_personalized([weak], [none], base, "d", modes_partition="dirichlet-0.1")
    assert t["candidate"] == "fedavg, adapters" and t["met"] is False


def test_tail_target_is_met_at_exactly_its_level():
    cell = dict(_pers_cell(0.9, 0.5), personalized_accuracy_p10=0.85)
    assert m.target_tail([cell], "d")["met"] is True
    assert m.target_tail([dict(cell, personalized_accuracy_p10=0.8499)], "d")["met"] is False


def _comp(setting, ef, ratio, delta):
    return {"setting": setting, "error_feedback": ef, "ratio_vs_dense": ratio, "accuracy_delta_vs_dense": delta,
            "final_accuracy": 0.8 + delta}


def test_compression_target_is_met_at_exactly_100x_and_one_point():
    dense = _comp("dense-fp32", True, 1.0, 0.0)
    assert m.target_compression([dense, _comp("int8-top1%", True, 100.0, -0.01)])["met"] is True
    assert m.target_compression([dense, _comp("int8-top1%", True, 99.9, -0.01)])["met"] is False
    assert m.target_compression([dense, _comp("int8-top1%", True, 100.0, -0.0101)])["met"] is False


def test_compression_target_counts_only_runs_with_error_feedback():
    rows = [_comp("dense-fp32", True, 1.0, 0.0), _comp("int8-top1%", True, 120.0, -0.03),
            _comp("int4-top1%", False, 200.0, 0.0)]  # only the run without EF would meet it
    t = m.target_compression(rows)
    assert t["met"] is False and "int8-top1% with EF" in t["detail"]
