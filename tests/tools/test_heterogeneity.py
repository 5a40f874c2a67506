"""The heterogeneity benchmark: derived numbers on synthetic curves, and a tiny grid end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fedge.tools.bench import hetero_metrics as m
from fedge.tools.bench.hetero_grid import GRID_COORDINATOR, HeteroGrid, build_jobs
from fedge.tools.bench.heterogeneity import assemble, main, run
from fedge.tools.simulate.config import with_options


def test_rounds_to_target_on_synthetic_curves():
    assert m.rounds_to_target([0.1, 0.5, 0.84, 0.86, 0.80], 0.85) == 4  # first crossing, not the last
    assert m.rounds_to_target([0.85], 0.85) == 1  # reaching it counts; rounds are 1-based
    assert m.rounds_to_target([0.2, 0.3], 0.85) is None
    assert m.rounds_to_target([None, 0.9], 0.85) == 2  # unscored rounds are skipped
    assert m.rounds_to_target([], 0.5) is None


def test_final_accuracy_and_bytes_to_reach():
    assert m.final_accuracy([0.1, 0.5, 0.6, 0.7], window=3) == pytest.approx(0.6)
    assert m.final_accuracy([0.4], window=3) == pytest.approx(0.4)
    assert m.bytes_to_reach([0.1, 0.6, 0.9], [100, 100, 100], 0.6) == 200
    assert m.bytes_to_reach([0.1, 0.2], [100, 100], 0.6) is None


def _cell(partition, algorithm, rounds, personalization=False, **kw):
    return {"dataset": "d", "partition": partition, "algorithm": algorithm, "personalization": personalization,
            "rounds_to_target": rounds, **kw}


def test_multipliers_against_a_naive_loop():
    cells = [_cell("iid", "fedavg", 10), _cell("shards-2", "fedavg", 35), _cell("dirichlet-0.1", "fedavg", None),
             _cell("iid", "fedadam", None), _cell("shards-2", "fedadam", 40), _cell("iid", "fedavg", 4, True),
             _cell("shards-2", "fedavg", 6, True), _cell("shards-2", "scaffold", 20)]  # scaffold: no IID cell
    rows = {(r["algorithm"], r["personalization"], r["partition"]): r["multiplier"] for r in m.multipliers(cells)}
    assert rows == {("fedavg", False, "shards-2"): 3.5, ("fedavg", False, "dirichlet-0.1"): None,
                    ("fedadam", False, "shards-2"): None, ("fedavg", True, "shards-2"): 1.5}


def test_shards_target_picks_the_fastest_algorithm_and_shows_fedavg():
    mults = m.multipliers([_cell("iid", "fedavg", 10), _cell("shards-2", "fedavg", 35),
                           _cell("iid", "scaffold", 12), _cell("shards-2", "scaffold", 20)])
    t = m.target_shards(mults, "d", 50)
    assert t["met"] is True and t["best"] == "scaffold" and t["best_multiplier"] == pytest.approx(20 / 12)
    assert t["fedavg_multiplier"] == 3.5 and "3.50x" in t["detail"]
    slow = m.target_shards(m.multipliers([_cell("iid", "fedavg", 10), _cell("shards-2", "fedavg", 35)]), "d", 50)
    assert slow["met"] is False
    assert m.target_shards([], "d", 50)["met"] is None


def test_shards_target_counts_personalization_on_against_its_own_iid_run():
    mults = m.multipliers([_cell("iid", "scaffold", 13), _cell("shards-2", "scaffold", 28),  # 2.15x
                           _cell("iid", "scaffold", 13, True), _cell("shards-2", "scaffold", 26, True),  # 2.00x
                           _cell("iid", "fedavg", 12), _cell("shards-2", "fedavg", None)])
    t = m.target_shards(mults, "d", 50)
    assert t["met"] is True and t["best_personalization"] is True and t["best_multiplier"] == pytest.approx(2.0)
    assert "2.15x" in t["detail"]  # the best with personalization off is shown too
    assert "never in 50 rounds > 4.17x (IID: 12)" in t["detail"]  # FedAvg's lower bound
    assert t["fedavg_multiplier"] is None


def test_personalization_compression_and_adapter_targets():
    cells = [_cell("dirichlet-0.1", "fedavg", None, True, personalized_accuracy_mean=0.93,
                   personalized_accuracy_min=0.86,
                   final_global_accuracy=0.6),
             _cell("dirichlet-0.1", "fedavg", None, False, personalized_accuracy_mean=0.6,
                   personalized_accuracy_min=0.1,
                   final_global_accuracy=0.8)]
    base = {"dirichlet-0.1": {"local_only": {"accuracy_mean": 0.90}}}
    t = m.target_personalized(cells, [], base, "d")
    assert t["met"] is True and t["checks"] == {"vs_local": True, "vs_global": True, "worst": True}
    base["dirichlet-0.1"]["local_only"]["accuracy_mean"] = 0.92  # +1 point is not +2
    assert m.target_personalized(cells, [], base, "d")["checks"]["vs_local"] is False
    # A mode run on fewer devices is compared with local-only on exactly those devices.
    base["dirichlet-0.1"]["local_only"]["accuracy_per_device"] = {"a": 0.80, "b": 0.84, "c": 1.0}
    mode = {"mode": "finetune", "personalized_accuracy_mean": 0.86, "personalized_accuracy_min": 0.85,
            "final_global_accuracy": 0.7, "devices": ["a", "b"]}
    t = m.target_personalized(cells, [mode], base, "d", modes_partition="dirichlet-0.1")
    assert t["met"] is False  # 0.86 < the best global 0.8 + 0.10
    mode["personalized_accuracy_mean"] = 0.95
    t = m.target_personalized(cells, [mode], base, "d", modes_partition="dirichlet-0.1")
    assert t["met"] is True and t["candidate"] == "fedavg, finetune mode" and "0.820" in t["detail"]
    assert m.target_personalized(cells, [mode], base, "d", modes_partition="iid")["candidate"] == "fedavg, adapters"

    rows = [{"setting": "dense-fp32", "error_feedback": True, "ratio_vs_dense": 1.0, "accuracy_delta_vs_dense": 0.0,
             "final_accuracy": 0.8},
            {"setting": "int8-top1%", "error_feedback": True, "ratio_vs_dense": 120.0,
             "accuracy_delta_vs_dense": -0.005,
             "final_accuracy": 0.795},
            {"setting": "int8-top1%", "error_feedback": False, "ratio_vs_dense": 120.0,
             "accuracy_delta_vs_dense": -0.05,
             "final_accuracy": 0.75}]
    t = m.target_compression(rows)
    assert t["met"] is True and "without EF" in t["detail"]
    rows[1]["accuracy_delta_vs_dense"] = -0.02
    assert m.target_compression(rows)["met"] is False
    # Per model: a second model that meets it is enough, and each model is judged against its own dense run.
    rows += [dict(r, model="full") for r in rows]
    rows[-2]["accuracy_delta_vs_dense"] = -0.004
    t = m.target_compression(rows)
    assert t["met"] is True and "adapters model" in t["detail"] and "full model" in t["detail"]

    curve = {"personalized_accuracy_curve": [0.5, 0.8, 0.9, 0.9, 0.9], "model": {"shared_params": 10}}
    adapters = {**curve, "bytes_up_curve": [100] * 5, "bytes_up_per_round": 100.0}
    full = {**curve, "personalized_accuracy_curve": [0.85, 0.9, 0.95, 0.95, 0.95], "bytes_up_curve": [800] * 5,
            "bytes_up_per_round": 800.0, "model": {"shared_params": 80}}
    c = m.upload_comparison(adapters, full)
    assert c["equal_accuracy_level"] == pytest.approx(0.9) and c["ratio_per_round"] == 8.0
    assert c["ratio_at_equal_accuracy"] == pytest.approx((2 * 800) / (3 * 100))  # full gets there a round sooner
    assert m.target_adapters(c)["met"] is False and m.target_adapters(None)["met"] is None


def test_tail_target_is_the_best_tenth_percentile_of_personalization_runs():
    rng = np.random.default_rng(3)
    per_device = {a: rng.uniform(0.6, 1.0, 25) for a in ("fedavg", "scaffold", "fedyogi")}
    cells = [_cell("dirichlet-0.1", a, None, True, personalized_accuracy_p10=float(np.percentile(v, 10)),
                   personalized_accuracy_min=float(v.min()), personalized_accuracy_mean=float(v.mean()))
             for a, v in per_device.items()]
    cells.append(_cell("dirichlet-0.1", "fedadam", None, False, personalized_accuracy_p10=0.99,
                       personalized_accuracy_min=0.99, personalized_accuracy_mean=0.99))  # off: not a candidate
    best = max(("fedavg", "scaffold", "fedyogi"), key=lambda a: np.percentile(per_device[a], 10))
    t = m.target_tail(cells, "d")
    assert t["id"] == 5 and t["best"] == best and t["p10"] == pytest.approx(np.percentile(per_device[best], 10))
    assert t["met"] is (t["p10"] >= 0.85) and t["worst"] == pytest.approx(per_device[best].min())
    assert m.target_tail(cells, "d", level=0.0)["met"] is True
    assert m.target_tail([], "d")["met"] is None


def test_pretrained_jobs_and_their_rows_stay_apart_from_the_random_ones():
    grid = replace(TINY, datasets=("mnist5k",), pretrained_partitions=("iid", "shards-2"),
                   pretrained_compression=("dense-fp32", "int8-top1%"))
    jobs = build_jobs(grid, pretrained_model="pre/model.toml")
    pre = [j for j in jobs if j.labels.get("backbone") == "pretrained"]
    assert len(jobs) - len(pre) == len(build_jobs(grid))
    assert sorted(j.kind for j in pre) == ["baselines"] * 2 + ["cell"] * 4 + ["compression"] * 2
    assert all(j.cfg.model == "pre/model.toml" and j.cfg.proxy_fraction == grid.proxy_fraction for j in pre)
    assert all(j.cfg.model is None and j.cfg.proxy_fraction == 0 for j in jobs if j not in pre)
    kinds = [j.kind for j in jobs]
    assert kinds == sorted(kinds, key=["compression", "mode", "cell", "baselines"].index)  # the longest first
    assert build_jobs(grid) == build_jobs(grid, pretrained_model=None)

    # Rows: IID 10 rounds random, 4 pretrained; shards 30 and 6. Each backbone's multiplier is
    # against its own IID run, and its rounds to target against its own centralized baseline.
    def row(kind, partition, backbone, **kw):
        return {"kind": kind, "dataset": "mnist5k", "partition": partition, "backbone": backbone, **kw}

    curve = {"rounds": 40, "bytes_up_per_round": 1.0, "bytes_up_dense_per_round": 1.0, "wall_seconds": 1.0,
             "model": {"shared_params": 1}, "declines": {}, "personalized_accuracy_min_curve": [0.5] * 40,
             "personalized_accuracy_curve": [0.5] * 40}

    def cell(partition, backbone, reach):
        accuracy = [0.0] * (reach - 1) + [0.9] * (40 - reach + 1)
        return row("cell", partition, backbone, algorithm="fedavg", personalization=False,
                   global_accuracy_curve=accuracy, **curve)

    def base(partition, backbone):
        return row("baselines", partition, backbone, central={"accuracy": 0.9}, local_only={"accuracy_mean": 0.5,
                                                                                         "accuracy_min": 0.4})

    results = [cell("iid", "random", 10), cell("shards-2", "random", 30), cell("iid", "pretrained", 4),
               cell("shards-2", "pretrained", 6), *(base(p, b) for p in ("iid", "shards-2")
                                                   for b in ("random", "pretrained"))]
    for r in results:
        if r["backbone"] == "random":
            del r["backbone"]  # random rows carry no label, as build_jobs makes them
    doc = assemble(grid, results, 1.0, pretrained={"model": "/tmp/x", "accuracy": 0.8})
    random_mult = {x["partition"]: x["multiplier"] for x in doc["multipliers"]}
    pre_mult = {x["partition"]: x["multiplier"] for x in doc["pretrained"]["multipliers"]}
    assert random_mult == {"shards-2": 3.0} and pre_mult == {"shards-2": 1.5}
    assert {c["backbone"] for c in doc["cells"]} == {"random"} and len(doc["cells"]) == 2
    assert {c["backbone"] for c in doc["pretrained"]["cells"]} == {"pretrained"}
    assert "model" not in doc["pretrained"] and doc["pretrained"]["accuracy"] == 0.8
    assert [t["id"] for t in doc["pretrained"]["targets"]] == [1, 5] and doc["pretrained"]["targets"][0]["met"]


TINY = HeteroGrid(datasets=("digits",), partitions=("iid", "shards-2"), algorithms=("fedavg",), devices=6,
                  coordinator=with_options(GRID_COORDINATOR, clients_per_round=3, epochs=1), rounds=2, local_epochs=2,
                  central_epochs=2,
                  compression=("dense-fp32", "int8-top1%"), compression_partition="iid",
                  compression_models=("adapters",),
                  compression_rounds=2, modes=("adapters", "full"),
                  modes_partition="shards-2", new_devices=1, finetune_steps=2, workers=1)


def test_jobs_cover_the_grid():
    kinds = [j.kind for j in build_jobs(TINY)]
    assert kinds.count("cell") == 2 * 1 * 2 and kinds.count("baselines") == 2
    assert kinds.count("compression") == 2 * 2 and kinds.count("mode") == 2
    both = build_jobs(replace(TINY, compression_models=("adapters", "full"), compression_rounds=7))
    sweep = [j for j in both if j.kind == "compression"]
    assert len(sweep) == 2 * 2 * 2 and {j.cfg.rounds for j in sweep} == {7}
    assert {(j.labels["compression_model"], j.cfg.personalization, j.cfg.finetune_steps) for j in sweep} == {
        ("adapters", "none", 0), ("full", "finetune", 0)}
    assert both[0].kind == "compression"  # the longest jobs go first
    assert build_jobs(TINY, data_dir="x")[-1].labels == {"dataset": "x", "partition": "given"}


def _write_blob_clients(folder, width=12, clients=4):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, width))
    folder.mkdir()
    for c in range(clients):
        y_train, y_test = rng.integers(0, 3, 30), rng.integers(0, 3, 10)
        np.savez(folder / f"site-{c}.npz", y_train=y_train, y_test=y_test,
                 x_train=(centers[y_train] + 0.3 * rng.normal(size=(30, width))).astype(np.float32),
                 x_test=(centers[y_test] + 0.3 * rng.normal(size=(10, width))).astype(np.float32))


def test_tiny_grid_writes_typed_json_report_and_plots(tmp_path):
    data = tmp_path / "sites"
    _write_blob_clients(data)
    doc = run(TINY, tmp_path / "out.json", tmp_path / "report", data_dir=str(data), log=lambda line: None)
    assert doc["errors"] == []
    assert json.loads((tmp_path / "out.json").read_text())["cells"] == doc["cells"]
    assert len(doc["cells"]) == 2 * 2 + 2  # digits x 2 partitions x on/off, and the folder's own split
    for c in doc["cells"]:
        assert isinstance(c["dataset"], str) and isinstance(c["partition"], str) and isinstance(c["algorithm"], str)
        assert isinstance(c["personalization"], bool)
        assert c["rounds_to_target"] is None or isinstance(c["rounds_to_target"], int)
        for key in ("final_global_accuracy", "personalized_accuracy_mean", "personalized_accuracy_min"):
            assert 0.0 <= c[key] <= 1.0
        assert c["personalized_accuracy_min"] <= c["personalized_accuracy_mean"]
        assert c["bytes_up_per_round"] > 0 and c["wall_seconds"] > 0
    assert {c["dataset"] for c in doc["cells"]} == {"digits", "sites"}
    assert set(doc["baselines"]) == {"iid", "shards-2", "given"}
    for b in doc["baselines"].values():
        assert 0 <= b["central"]["accuracy"] <= 1 and 0 <= b["local_only"]["accuracy_mean"] <= 1
        assert b["target_accuracy"] == pytest.approx(0.95 * b["central"]["accuracy"])
    settings = {(r["setting"], r["error_feedback"]) for r in doc["compression"]}
    assert settings == {("dense-fp32", True), ("dense-fp32", False), ("int8-top1%", True), ("int8-top1%", False)}
    for r in doc["compression"]:
        assert 0 <= r["final_accuracy"] <= 1 and r["bytes_up_per_round"] > 0
        if r["setting"] == "int8-top1%":
            assert r["ratio_vs_dense"] > 5  # 5 bytes per kept value instead of 400 per 100 values
    assert doc["upload_comparison"]["ratio_per_round"] > 5
    assert [t["id"] for t in doc["targets"]] == [1, 2, 3, 4, 5]
    assert doc["pretrained"] == {"skipped": "the pretrained spec is MNIST's MLP: pretrained rows run on mnist5k only"}
    assert all(t["met"] in (True, False, None) for t in doc["targets"])
    modes = {r["mode"]: r for r in doc["personalization_modes"]}
    assert modes["adapters"]["new_devices"]["count"] == 1
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## Issue targets" in report and "| shards-2 |" in report
    for png in ("accuracy_vs_round.png", "personalized_vs_round.png", "accuracy_vs_uplink.png"):
        assert (tmp_path / "report" / png).stat().st_size > 5000


@pytest.mark.slow
def test_quick_grid_from_the_command_line(tmp_path):
    """What CI runs: the reduced grid, in worker processes (84-127 s on 2 shared cores; not asserted)."""
    assert main(["--quick", "--json", str(tmp_path / "q.json"), "--report", str(tmp_path / "r")]) == 0
    doc = json.loads((tmp_path / "q.json").read_text())
    assert doc["quick"] is True and doc["errors"] == []
    assert {"cells", "baselines", "compression", "multipliers", "targets"} <= set(doc)
    assert (tmp_path / "r" / "report.md").exists()
