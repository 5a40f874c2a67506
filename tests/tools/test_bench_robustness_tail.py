"""fedge bench robustness's tail accuracy: each cell's mean of the last max(3, ceil(rounds / 5))
rounds beside the last-3 `final_accuracy`, in the JSON, the tables and a second set of verdict
lines, and computed from `accuracy_curve` for JSONs written before the field."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from types import SimpleNamespace

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.bench.robustness import Cell, RobustGrid, main, run_cell
from fedge.tools.bench.robustness_report import markdown, tail, tail_window

# 100 rounds: 0.50 up to round 80, then a climb from 0.60 to 0.79 whose last 3 rounds sit well
# over its last 20 (last 3: 0.780; last 20: 0.695).
CURVE = [0.5] * 80 + [0.6 + 0.01 * i for i in range(20)]


def _plain_mean(values):
    total = 0.0
    for v in values:
        total += v
    return total / len(values)


def test_the_window_is_a_fifth_of_the_rounds_and_never_under_three():
    for rounds in (1, 8, 12, 15, 16, 20, 99, 100, 101):
        assert tail_window(rounds) == max(3, math.ceil(rounds / 5))
    assert tail_window(100) == 20 and tail_window(8) == 3


def test_tail_is_the_plain_mean_of_the_last_twenty_of_a_hundred():
    mean, n = tail(CURVE, 100)
    assert n == 20 and mean == pytest.approx(_plain_mean(CURVE[80:])) and mean == pytest.approx(0.695)
    assert _plain_mean(CURVE[-3:]) == pytest.approx(0.78)  # the figures the two means must tell apart
    # rounds with no evaluation are skipped and not counted; a curve with none left says so
    assert tail([0.1, 0.4, None, 0.6], 4) == (pytest.approx(0.5), 2)  # window 3: 0.4, 0.6
    assert tail([None, None], 2) == (None, 0)
    for bad in (["0.5"], [float("nan")], [True], "0.5", [[0.5]]):
        with pytest.raises(ValueError, match="accuracy_curve"):
            tail(bad, 100)


def test_a_cell_records_the_tail_beside_the_last_three(monkeypatch):
    """run_cell on a stubbed simulation: both figures against plain means of the same curve."""
    from fedge.tools.simulate import fleet

    rounds = [{"global_accuracy": a, "backdoor_success": None} for a in CURVE]
    monkeypatch.setattr(fleet, "run_simulation", lambda config: SimpleNamespace(rounds=rounds, summary={}))
    grid = RobustGrid(attacks=("none",), defenses=("mean",), partitions=("dirichlet",), rounds=100)
    cell = run_cell(grid, Cell("none", "mean", "dirichlet", 0.0))
    assert cell["final_accuracy"] == pytest.approx(_plain_mean(CURVE[-3:]))
    assert cell["tail_accuracy"] == pytest.approx(_plain_mean(CURVE[-20:])) and cell["tail_rounds"] == 20
    json.dumps(cell, allow_nan=False)  # plain floats and ints: the JSON document takes them as they are


def _cell(attack, defense, final, curve=None, tail_accuracy=None):
    c = {"attack": attack, "defense": defense, "default": defense == "norm_bound", "partition": "dirichlet",
         "attackers_fraction": 0.0 if attack == "none" else 0.2, "final_accuracy": final, "backdoor_success": None}
    if curve is not None:
        c["accuracy_curve"] = curve
    if tail_accuracy is not None:
        c["tail_accuracy"], c["tail_rounds"] = tail_accuracy, 20
    return c


def _flat(level):
    return [0.1] * 80 + [level] * 20


# Last 3 and last 20 disagree on the verdicts: on the last 3 the default's worst attack is
# sign flip (10 points under clean FedAvg's 0.800), over the last 20 it is IPM.
CELLS = [_cell("none", "mean", 0.80, _flat(0.75)), _cell("sign_flip", "mean", 0.30, _flat(0.40)),
         _cell("ipm", "mean", 0.50, _flat(0.35)), _cell("none", "norm_bound", 0.79, _flat(0.76)),
         _cell("sign_flip", "norm_bound", 0.70, _flat(0.72)), _cell("ipm", "norm_bound", 0.72, _flat(0.69))]


def _doc(cells):
    return {"schema": 1, "benchmark": "robustness", "grid": {**asdict(RobustGrid()), "rounds": 100},
            "cells": cells, "errors": [], "wall_seconds": 1.0}


def test_the_tail_verdicts_match_a_plain_computation():
    report = markdown(_doc(CELLS))
    tails = {(c["attack"], c["defense"]): _plain_mean(c["accuracy_curve"][-20:]) for c in CELLS}
    clean = tails[("none", "mean")]
    worst = min((v, a) for (a, d), v in tails.items() if d == "norm_bound" and a != "none")
    loss = max((clean - v, a) for (a, d), v in tails.items() if d == "mean" and a != "none")
    change = tails[("none", "norm_bound")] - clean
    assert (f"- over the last 20 rounds (`tail_accuracy`): default (norm_bound): worst attack {worst[1]}, "
            f"{100 * (clean - worst[0]):.1f} points under clean FedAvg ({clean:.3f}); with no attack "
            f"{100 * change:+.1f} points\n") in report
    assert f"- over the last 20 rounds (`tail_accuracy`): plain FedAvg: largest loss {100 * loss[0]:.1f} " \
           f"points ({loss[1]})\n" in report
    assert worst[1] == loss[1] == "ipm"  # the last 3 say sign_flip for both: the test tells them apart
    # the last-3 lines stand as they were, word for word
    assert ("- default (norm_bound): worst attack sign_flip, 10.0 points under clean FedAvg (0.800); "
            "with no attack -1.0 points; highest backdoor success n/a\n") in report
    assert "- plain FedAvg: largest loss 50.0 points (sign_flip)\n" in report
    assert "| sign_flip | 0.300 / 0.400 | 0.700 / 0.720 |" in report


def test_render_uses_the_recorded_tail_else_the_curve_else_a_dash(tmp_path):
    recorded = [_cell("none", "mean", 0.80, _flat(0.75), tail_accuracy=0.123),
                _cell("sign_flip", "mean", 0.30, tail_accuracy=0.456)]
    older = [_cell("none", "mean", 0.80, _flat(0.75)), _cell("sign_flip", "mean", 0.30, _flat(0.40))]
    bare = [_cell("none", "mean", 0.80), _cell("sign_flip", "mean", 0.30)]
    for name, cells, row in (("recorded", recorded, "| sign_flip | 0.300 / 0.456 |"),
                             ("older", older, "| sign_flip | 0.300 / 0.400 |"),
                             ("bare", bare, "| sign_flip | 0.300 / – |")):
        out = tmp_path / f"{name}.json"
        out.write_text(json.dumps(_doc(cells)))
        assert main(["--render", str(out)]) == 0
        report = out.with_suffix(".md").read_text()
        assert row in report, name
        assert ("plain FedAvg: largest loss 50.0 points (sign_flip)" in report
                and "mean of the last 3 rounds / mean of the last 20" in report), name
    report = (tmp_path / "recorded.md").read_text()  # the recorded figure wins over the curve
    assert "| none | 0.800 / 0.123 |" in report and "largest loss 33.3 points (sign_flip)" not in report
    assert "- over the last 20 rounds (`tail_accuracy`): plain FedAvg: largest loss -33.3 points" in report
    assert ("- over the last 20 rounds (`tail_accuracy`): n/a (cells without an `accuracy_curve` in this JSON)"
            in (tmp_path / "bare.md").read_text())


@pytest.mark.parametrize("cell", [{"accuracy_curve": [0.5, "0.6"]}, {"accuracy_curve": {"0": 0.5}},
                                  {"tail_accuracy": "high"}, {"tail_accuracy": float("inf")}])
def test_render_names_a_curve_that_is_not_numbers(tmp_path, cell):
    out = tmp_path / "bad.json"
    out.write_text(json.dumps(_doc([{**_cell("none", "mean", 0.8), **cell}])))
    with pytest.raises(ConfigError, match=r"cell 0 \(none vs mean\): (accuracy_curve|tail_accuracy)"):
        main(["--render", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


@pytest.mark.parametrize("doc", [{"grid": {"rounds": "100"}, "cells": []}, {"grid": {"rounds": True}, "cells": []},
                                 {"grid": {"rounds": 100}}, {"grid": {"rounds": 100}, "cells": [1]}])
def test_render_names_a_json_with_no_cells_or_rounds(tmp_path, doc):
    out = tmp_path / "bad.json"
    out.write_text(json.dumps({"benchmark": "robustness", **doc}))
    with pytest.raises(ConfigError, match="no grid with its rounds, or no list of cells"):
        main(["--render", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json"]


@pytest.mark.parametrize("cells", [
    [{**_cell("none", "mean", 0.80), "tail_accuracy": None, "tail_rounds": 0},
     {**_cell("sign_flip", "mean", 0.30), "tail_accuracy": None, "tail_rounds": 0}],
    [_cell("none", "mean", 0.80, _flat(0.75)), _cell("sign_flip", "mean", 0.30)],
], ids=["recorded_null", "some_cells_without_a_curve"])
def test_a_table_with_a_cell_without_a_tail_renders_a_dash_and_no_tail_verdicts(tmp_path, cells):
    """tail_accuracy may be recorded as null (no round of the tail evaluated), and an older JSON
    may hold a curve for some cells only: the cell shows "–" and the tail verdicts say n/a."""
    out = tmp_path / "some.json"
    out.write_text(json.dumps(_doc(cells)))
    assert main(["--render", str(out)]) == 0
    report = out.with_suffix(".md").read_text()
    assert "| sign_flip | 0.300 / – |" in report
    assert "- over the last 20 rounds (`tail_accuracy`): n/a (cells without an `accuracy_curve` in this JSON)" in report
    assert "- plain FedAvg: largest loss 50.0 points (sign_flip)" in report


@pytest.mark.parametrize("name", ["missing.json", "folder"])
def test_render_names_a_json_it_cannot_read(tmp_path, name):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"--render {tmp_path / name}:")):
        main(["--render", str(tmp_path / name)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
