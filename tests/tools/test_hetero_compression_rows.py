"""The heterogeneity benchmark's compression rows (heterogeneity._compression): each setting's
ratio is the same model's dense fp32 bytes per round over its own, its delta its final accuracy
minus dense's, and dense means the dense run with error feedback where there is one."""

from __future__ import annotations

import pytest

from fedge.tools.bench.heterogeneity import _compression


def _run(setting, ef, bytes_per_round, final):
    return {"compression_model": "adapters", "setting": setting, "error_feedback": ef, "rounds": 3,
            "model": {"shared_params": 100}, "global_accuracy_curve": [0.1, final, final, final],
            "bytes_up_per_round": bytes_per_round, "bytes_up_curve": [bytes_per_round] * 4, "wall_seconds": 1.0}


def test_ratios_and_deltas_are_against_the_dense_run_with_error_feedback():
    runs = [_run("dense-fp32", False, 410.0, 0.70), _run("int8-top1%", True, 8.0, 0.75),
            _run("dense-fp32", True, 400.0, 0.80), _run("int8-top1%", False, 8.0, 0.60)]
    rows = {(r["setting"], r["error_feedback"]): r for r in _compression(runs, window=3)}
    for run in runs:
        row = rows[run["setting"], run["error_feedback"]]
        assert row["ratio_vs_dense"] == pytest.approx(400.0 / run["bytes_up_per_round"])
        assert row["accuracy_delta_vs_dense"] == pytest.approx(run["global_accuracy_curve"][-1] - 0.80)
    assert rows["int8-top1%", True]["accuracy_delta_vs_dense"] == pytest.approx(-0.05)  # a loss is negative
    only = _compression([_run("dense-fp32", False, 410.0, 0.70), _run("int8", False, 100.0, 0.72)], window=3)
    assert [r["ratio_vs_dense"] for r in only] == [1.0, 4.1]  # no dense run with EF: the one without
