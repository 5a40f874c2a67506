"""`fedge bench privacy` at a tiny scale (the JSON the issue asks for, and the PNG), and the
synthetic(α, β) data set it runs on."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.tools.cli import main
from fedge.tools.simulate.scoring import smallest_devices
from fedge.tools.synthetic import synthetic


def test_synthetic_gives_every_device_enough_examples_and_alpha_beta_make_it_non_iid():
    data = synthetic(200, 1.0, 1.0, seed=1)
    assert len(data.clients) == 200 and data.input_shape == (60,) and data.num_classes == 10
    assert min(len(c.y_train) for c in data.clients) >= 20 and all(len(c.y_test) >= 1 for c in data.clients)
    assert data.clients[0].x_train.dtype == np.float32

    def label_spread(d):  # mean total-variation distance of a device's labels from the population's
        everyone = np.bincount(np.concatenate([c.y_train for c in d.clients]), minlength=10) / sum(
            len(c.y_train) for c in d.clients)
        return np.mean([0.5 * np.abs(np.bincount(c.y_train, minlength=10) / len(c.y_train) - everyone).sum()
                        for c in d.clients])
    assert label_spread(data) > label_spread(synthetic(200, 0.0, 0.0, seed=1))
    again = synthetic(200, 1.0, 1.0, seed=1)
    assert all(np.array_equal(a.x_train, b.x_train) for a, b in zip(data.clients, again.clients))
    with pytest.raises(ValueError):
        synthetic(10, -1.0, 0.0)


def test_bench_privacy_writes_the_runs_the_issue_names(tmp_path):
    out = tmp_path / "privacy.json"
    assert main(["bench", "privacy", "--json", str(out), "--devices", "30", "--clients-per-round", "6",
                 "--rounds", "2", "--epsilons", "8,inf", "--distributed-quorum", "5"]) == 0
    doc = json.loads(out.read_text())
    assert (doc["population"], doc["clients_per_round"], doc["rounds"]) == (30, 6, 2)
    central, distributed, none = doc["runs"]
    for run in doc["runs"]:
        assert {"mechanism", "epsilon", "delta", "bits", "global_accuracy", "personalized_accuracy"} <= set(run)
        assert 0 <= run["global_accuracy"] <= 1 and 0 <= run["personalized_accuracy"] <= 1
    assert central["mechanism"] == "central" and central["epsilon"] == 8.0 and central["noise_multiplier"] > 0
    assert central["bits"] is None and none["bits"] is None
    assert central["epsilon_spent"] <= 8.0 and central["epsilon_spent"] == pytest.approx(8.0, rel=1e-3)
    # the same z, charged the same: distributed DP spends what central does, at 16 bits a coordinate
    assert distributed["mechanism"] == "distributed" and distributed["bits"] == 16
    assert distributed["noise_multiplier"] == central["noise_multiplier"]
    assert distributed["epsilon_spent"] == pytest.approx(central["epsilon_spent"], abs=1e-9)
    assert distributed["rounds_committed"] == 2
    # secure aggregation's own encoding, not the grid's compression
    assert (distributed["quant_bits"], distributed["topk_fraction"], distributed["error_feedback"]) == (None,) * 3
    assert (central["quant_bits"], central["topk_fraction"], central["error_feedback"]) == (8, 1.0, True)
    assert central["clipping"] == distributed["clipping"] == "adaptive"  # the same rule on both sides
    assert none["mechanism"] == "none" and none["epsilon"] is None
    assert 1 <= none["smallest_devices"] <= 3 and 0 <= none["smallest_devices_global_accuracy"] <= 1
    assert central["epochs"] == 2 and central["lr"] == 0.02  # the simulator's preset unless asked
    assert (tmp_path / "privacy.png").stat().st_size > 1000


def test_smallest_devices_are_the_tenth_with_fewest_training_examples():
    sizes = {f"d{i}": n for i, n in enumerate([50, 20, 30, 20, 90, 60, 70, 80, 40, 100, 25, 35, 45, 55, 65, 75,
                                                 85, 95, 99, 21])}
    per_device = {d: {"examples": 5, "accuracy_global": i / 20, "accuracy_personal": 1 - i / 20}
                  for i, d in enumerate(sizes)}
    per_device["d3"]["accuracy_personal"] = None  # no personal head: its global accuracy stands in
    row = smallest_devices(per_device, sizes)
    # a plain reading: 20 devices, the 2 smallest are d1 and d3 (20 examples each; ties by id)
    assert row["smallest_devices"] == 2 and row["smallest_devices_max_examples"] == 20
    assert row["smallest_devices_global_accuracy"] == pytest.approx((1 / 20 + 3 / 20) / 2)
    assert row["smallest_devices_personalized_accuracy"] == pytest.approx((19 / 20 + 3 / 20) / 2)
    assert smallest_devices({}, sizes) == {}


def test_the_label_skew_setting_is_the_async_benchs_data_and_the_choice_is_checked():
    from dataclasses import replace

    from fedge.tools.bench.label_skew import label_skew
    from fedge.tools.bench.privacy import PrivacyGrid, population

    grid = replace(PrivacyGrid(), data="label-skew", devices=40, clients_per_round=10, alpha=0.3, seed=3)
    got, want = population(grid), label_skew(40, 0.3, seed=3)
    assert got.name == want.name == "label-skew(Dirichlet 0.3)"
    assert all(np.array_equal(a.y_train, b.y_train) and np.array_equal(a.x_train, b.x_train)
               for a, b in zip(got.clients, want.clients))
    assert min(len(c.y_train) for c in got.clients) >= 20
    assert population(replace(grid, data="synthetic")).name == "synthetic(0.3,0.5)"
    with pytest.raises(ValueError, match="label-skew"):
        population(replace(grid, data="mnist"))


def test_bench_privacy_runs_top_k_under_central_dp_and_refuses_it_with_secure_aggregation(tmp_path, monkeypatch):
    from dataclasses import replace

    from fedge.tools.bench.privacy import PrivacyGrid
    from fedge.tools.simulate import fleet

    ran = []  # the configs the runs really simulated

    def recording(cfg, **kw):
        ran.append(cfg)
        return real(cfg, **kw)
    real = fleet.run_simulation
    monkeypatch.setattr(fleet, "run_simulation", recording)

    args = ["bench", "privacy", "--devices", "30", "--clients-per-round", "6", "--rounds", "2",
            "--epsilons", "8", "--mechanisms", "central", "--data", "label-skew"]
    dense, sparse = tmp_path / "dense.json", tmp_path / "sparse.json"
    assert main(args + ["--json", str(dense)]) == 0
    assert main(args + ["--json", str(sparse), "--topk", "0.1", "--no-error-feedback", "--quant-bits", "4",
                        "--personal-head-from-global"]) == 0
    dense_cfg, sparse_cfg = ran
    assert (dense_cfg.coordinator.compression.topk_fraction, dense_cfg.coordinator.compression.quant_bits,
            dense_cfg.coordinator.compression.error_feedback) == (1.0, 8, True)
    assert (sparse_cfg.coordinator.compression.topk_fraction, sparse_cfg.coordinator.compression.quant_bits,
            sparse_cfg.coordinator.compression.error_feedback) == (0.1, 4, False)
    assert (sparse_cfg.coordinator.hyper.personal_head_from_global,
            dense_cfg.coordinator.hyper.personal_head_from_global) == (True, False)
    (d,), (s,) = json.loads(dense.read_text())["runs"], json.loads(sparse.read_text())["runs"]
    assert (d["topk_fraction"], s["topk_fraction"], s["quant_bits"]) == (1.0, 0.1, 4)
    assert (d["error_feedback"], s["error_feedback"]) == (True, False)
    # same z and the same charge; a tenth of each tensor's int8 codes plus their indices on the wire
    assert s["noise_multiplier"] == d["noise_multiplier"] and s["epsilon_spent"] == d["epsilon_spent"]
    assert 0 < s["bytes_up"] < 0.5 * d["bytes_up"]  # what the devices sent, as the configs say
    with pytest.raises(ValueError, match="central only"):
        replace(PrivacyGrid(), topk_fraction=0.1)
    with pytest.raises(ValueError, match="topk"):
        replace(PrivacyGrid(), topk_fraction=0.0, mechanisms=("central",))
    with pytest.raises(SystemExit) as usage:  # the CLI says so as a usage error
        main(["bench", "privacy", "--json", str(tmp_path / "x.json"), "--topk", "0.1"])
    assert usage.value.code == 2 and not (tmp_path / "x.json").exists()


def test_a_run_whose_final_round_no_device_scored_prints_a_dash_and_plots(tmp_path):
    """The final round's accuracies are None when every device declined its evaluation; the
    progress line formatted None with :.3f (TypeError) after the run, before its row was saved."""
    from fedge.tools.bench.privacy import plot, progress_line

    row = {"mechanism": "central", "epsilon": 8.0, "global_accuracy": None, "personalized_accuracy": None,
           "noise_multiplier": 1.25, "wall_seconds": 3.2, "delta": 1e-6, "bits": None}
    assert progress_line(row, 8.0) == "central ε=8: global -, personalized - (z=1.25, 3 s)"
    scored = dict(row, global_accuracy=0.5, personalized_accuracy=0.25)
    assert progress_line(scored, 8.0) == "central ε=8: global 0.500, personalized 0.250 (z=1.25, 3 s)"
    none = dict(row, mechanism="none", epsilon=None)  # its lines were axhline(None): a TypeError too
    doc = {"runs": [row, scored, none], "data": {"name": "x"}, "population": 10, "clients_per_round": 2, "rounds": 1}
    png = plot(doc, tmp_path / "p.png")
    assert png is None or png.stat().st_size > 1000  # None: no matplotlib here
