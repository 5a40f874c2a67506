"""fedge bench robustness on a tiny grid: one JSON document with a cell per attack x defence, and
its Markdown and PNG report (robustness_report.py) beside it."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict

import pytest

from fedge.coordinator.robust.norm_bound import NormBoundConfig
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.models.output_dir import ForeignOutput
from fedge.tools.bench.robustness import QUICK, Cell, RobustGrid, _recorded, build_cells, main
from fedge.tools.bench.robustness_report import summary
from fedge.tools.beside_json import png_software


def test_build_cells_runs_the_clean_reference_once_per_defence_and_partition():
    grid = RobustGrid(attacks=("none", "alie"), defenses=("mean", "median"), partitions=("iid",), fractions=(0.1, 0.2))
    cells = build_cells(grid)
    assert cells == [Cell("none", "mean", "iid", 0.0), Cell("alie", "mean", "iid", 0.1),
                     Cell("alie", "mean", "iid", 0.2),
                     Cell("none", "median", "iid", 0.0), Cell("alie", "median", "iid", 0.1),
                     Cell("alie", "median", "iid", 0.2)]
    assert len(build_cells(QUICK)) == 6 * (1 + 4)


def test_the_json_states_the_exclusion_bound_the_cells_ran_with():
    """A grid left on the coordinator's default records that default's value, so an old JSON
    still says what it measured after the default moves (it moved from 10 to 4)."""
    assert _recorded(RobustGrid())["exclude_multiplier"] == NormBoundConfig().exclude_multiplier == 4.0
    assert _recorded(RobustGrid(exclude_multiplier=10.0))["exclude_multiplier"] == 10.0
    assert _recorded(RobustGrid(exclude_multiplier=0.0))["exclude_multiplier"] == 0.0  # 0 = never, kept as is
    assert _recorded(RobustGrid())["exclude_claim_allowance"] == NormBoundConfig().exclude_claim_allowance == 1.0
    assert _recorded(RobustGrid(exclude_claim_allowance=2.5))["exclude_claim_allowance"] == 2.5
    assert _recorded(RobustGrid())["device_clip"] is NormBoundConfig().device_clip is True
    assert _recorded(RobustGrid(device_clip=False))["device_clip"] is False


def test_no_device_clip_reaches_the_cells_config():
    from fedge.tools.bench.robustness import _norm
    assert _norm(RobustGrid()) == {}  # the coordinator's own default
    assert _norm(RobustGrid(device_clip=False))["norm"] == NormBoundConfig(device_clip=False)


def test_the_sign_split_defence_is_norm_bound_with_the_gated_split_at_4(tmp_path):
    from dataclasses import replace

    from fedge.coordinator.robust.sign_split import SignSplitConfig
    from fedge.tools.bench.robustness import _check, cell_config

    grid = RobustGrid(attacks=("sign_flip",), defenses=("sign_split", "norm_bound"), partitions=("dirichlet",),
                      fractions=(0.2,))
    _check(grid)
    sign = cell_config(grid, Cell("sign_flip", "sign_split", "dirichlet", 0.2), "unused").coordinator
    plain = cell_config(grid, Cell("sign_flip", "norm_bound", "dirichlet", 0.2), "unused").coordinator
    assert sign.aggregator == "norm_bound" and sign.robust.sign == SignSplitConfig(gap=4.0)
    assert plain.robust.sign == SignSplitConfig() and replace(sign, robust=plain.robust) == plain
    with pytest.raises(SystemExit) as refused:  # a preset is not an aggregator to bucket
        main(["--json", str(tmp_path / "out.json"), "--quick", "--defenses", "sign_split+bucketing"])
    assert refused.value.code == 2


@pytest.mark.parametrize("flags", [["--exclude-claim-allowance", "0.5"], ["--attack-scale", "-1"],
                                   ["--exclude-multiplier", "1"]])
def test_a_setting_every_cell_would_fail_on_is_refused_before_any_runs(tmp_path, flags):
    with pytest.raises(SystemExit) as refused:
        main(["--json", str(tmp_path / "out.json"), "--quick", *flags])
    assert refused.value.code == 2 and not (tmp_path / "out.json").exists()


@pytest.mark.slow
def test_bench_writes_cells(tmp_path):
    out = tmp_path / "robust.json"
    assert main(["--json", str(out), "--quick", "--workers", "1", "--rounds", "2",
                 "--attacks", "none,backdoor", "--defenses", "norm_bound", "--guard-fraction", "0.05",
                 "--exclude-multiplier", "4"]) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "robustness" and doc["errors"] == []
    assert [(c["attack"], c["defense"], c["default"], c["attackers_fraction"]) for c in doc["cells"]] == [
        ("none", "norm_bound", True, 0.0), ("backdoor", "norm_bound", True, 0.3)]
    assert all(c["guard_fraction"] == 0.05 for c in doc["cells"]) and doc["grid"]["exclude_multiplier"] == 4.0
    for c in doc["cells"]:  # 2 rounds of up to 5 reports; the guard set leaves out at most half of each
        s = c["screened"]
        assert 0 < s["reports"] <= 10 and 0 <= s["honest"] + s["attackers"] <= s["reports"] // 2 + 1
        assert set(c["excluded"]) == {"honest", "attackers", "reports"} and c["excluded"]["reports"] == s["reports"]
    # the model-replacement updates are far over 4x the median norm: the bound names them as attackers'
    assert doc["cells"][1]["excluded"]["attackers"] >= 1
    clean, attacked = doc["cells"]
    assert clean["backdoor_success"] is None and 0 <= attacked["backdoor_success"] <= 1
    assert all(0 <= c["final_accuracy"] <= 1 and len(c["accuracy_curve"]) == 2 for c in doc["cells"])
    # 2 rounds: the tail window (3) holds the whole curve
    assert all(c["tail_rounds"] == 2 and c["tail_accuracy"] == pytest.approx(sum(c["accuracy_curve"]) / 2)
               for c in doc["cells"])
    report = out.with_suffix(".md").read_text()
    assert report.startswith("# fedge bench robustness: digits") and "| backdoor | " in report
    if importlib.util.find_spec("matplotlib"):
        assert png_software(out.with_suffix(".png")) == "fedge bench robustness"


def _cell(attack, defense, accuracy, backdoor=None, partition="dirichlet", fraction=0.2):
    return {"attack": attack, "defense": defense, "default": defense == "norm_bound", "partition": partition,
            "attackers_fraction": 0.0 if attack == "none" else fraction, "final_accuracy": accuracy,
            "backdoor_success": backdoor}


CELLS = [_cell("none", "mean", 0.80), _cell("sign_flip", "mean", 0.20), _cell("scale", "mean", 0.10),
         _cell("backdoor", "mean", 0.15, 0.9), _cell("none", "norm_bound", 0.81),
         _cell("sign_flip", "norm_bound", 0.70), _cell("scale", "norm_bound", 0.78),
         _cell("backdoor", "norm_bound", 0.77, 0.05)]


def test_the_report_summary_matches_the_cells_worked_by_hand():
    s = summary(CELLS)
    assert s["default"] == "norm_bound" and s["clean_fedavg"] == 0.80
    assert s["default_worst_attack"] == "sign_flip" and s["default_worst_points"] == pytest.approx(10.0)
    assert s["fedavg_worst_attack"] == "scale" and s["fedavg_largest_loss_points"] == pytest.approx(70.0)
    assert s["default_clean_change_points"] == pytest.approx(1.0)
    assert s["default_backdoor_max"] == 0.05
    lonely = summary([c for c in CELLS if c["defense"] == "norm_bound"])  # no FedAvg column: nothing to say
    assert lonely["default_worst_attack"] == "sign_flip" and lonely["default_worst_points"] is None


def test_render_writes_the_report_of_a_json_and_never_over_someone_elses(tmp_path, capsys):
    doc = {"schema": 1, "benchmark": "robustness", "grid": asdict(RobustGrid()), "cells": CELLS, "errors": [],
           "wall_seconds": 1.0}
    out = tmp_path / "r.json"
    out.write_text(json.dumps(doc))
    assert main(["--render", str(out)]) == 0
    report = out.with_suffix(".md").read_text()
    # no accuracy_curve in these cells: the tail figure is a dash (test_bench_robustness_tail.py)
    assert "| sign_flip | 0.200 / – | 0.700 / – |" in report
    assert "| backdoor | 0.150 / – (0.90) | 0.770 / – (0.05) |" in report
    assert "worst attack sign_flip, 10.0 points under clean FedAvg (0.800)" in report
    assert main(["--render", str(out)]) == 0  # its own report, replaced
    out.with_suffix(".md").write_text("my notes on the grid\n")
    with pytest.raises(ForeignOutput, match=r"r\.md"):
        main(["--render", str(out)])
    assert out.with_suffix(".md").read_text() == "my notes on the grid\n"
    with pytest.raises(ForeignOutput, match=r"r\.md"):  # and before a grid runs, not after it
        main(["--json", str(out), "--quick"])


def test_render_refuses_a_json_that_is_not_this_benchs(tmp_path):
    other = tmp_path / "o.json"
    other.write_text(json.dumps({"schema": 1, "benchmark": "privacy"}))
    with pytest.raises(ConfigError, match="not a fedge bench robustness JSON"):
        main(["--render", str(other)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


@pytest.mark.parametrize("change", [
    lambda doc: doc["grid"].pop("dataset"),
    lambda doc: doc["cells"][0].pop("partition"),
    lambda doc: doc["cells"][0].update(final_accuracy="0.8"),
    lambda doc: doc["cells"][0].update(backdoor_success=[0.1]),
    lambda doc: doc.update(errors=[{"attack": "ipm"}]),
], ids=["grid_without_dataset", "cell_without_partition", "accuracy_a_string", "backdoor_a_list",
        "error_without_fields"])
def test_render_names_a_json_missing_a_field_the_report_reads(tmp_path, change):
    """Each was a KeyError, TypeError or ValueError traceback from the middle of the report."""
    doc = {"schema": 1, "benchmark": "robustness", "grid": asdict(RobustGrid()), "cells": json.loads(json.dumps(CELLS)),
           "errors": [], "wall_seconds": 1.0}
    change(doc)
    out = tmp_path / "r.json"
    out.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"--render .*r\.json: "):
        main(["--render", str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
