"""End-to-end simulations over the in-memory transport with real onnxruntime training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.tools.cli import main
from fedge.tools.simulate.config import sim_config
from fedge.tools.simulate.fleet import run_simulation

ROUND_KEYS = {"round", "global_accuracy", "personalized_accuracy_mean", "personalized_accuracy_min",
              "personalized_accuracy_p10", "bytes_up", "bytes_up_dense", "bytes_down", "seconds"}


def _write_blob_clients(folder, width=23, classes=4, clients=5, seed=0):
    """Per-client npz files of Gaussian blobs: learnable, any width, label-skewed."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=1.0, size=(classes, width))  # unit-scale features, as the README asks
    folder.mkdir()
    for c in range(clients):
        labels = rng.choice(classes, size=2, replace=False)  # two classes per client
        def draw(n, labels=labels):
            y = rng.choice(labels, size=n)
            return (centers[y] + 0.5 * rng.normal(size=(n, width))).astype(np.float32), y
        x_train, y_train = draw(60)
        x_test, y_test = draw(20)
        np.savez(folder / f"site-{c}.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def test_out_folder_and_plot_alone_are_written(tmp_path, capsys):
    """--out DIR and --plot without --json each once wrote nothing and said nothing."""
    data = tmp_path / "clients"
    _write_blob_clients(data, clients=3)
    run = ["simulate", "--data", str(data), "--rounds", "1", "--quiet"]
    assert main([*run, "--out", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "run.json").read_text())["config"]["data_dir"] == str(data)
    assert (tmp_path / "out" / "run.png").stat().st_size > 1000
    assert main([*run, "--plot", str(tmp_path / "plots" / "p.png")]) == 0
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["p.png"]
    # a run.json fedge did not write is never replaced
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "run.json").write_text('{"mine": 1}')
    assert main([*run, "--out", str(tmp_path / "theirs")]) == 2
    assert "ForeignOutput" in capsys.readouterr().err
    assert (tmp_path / "theirs" / "run.json").read_text() == '{"mine": 1}'


def test_npz_folder_of_unseen_width_with_baselines(tmp_path):
    data = tmp_path / "clients"
    _write_blob_clients(data)
    out = tmp_path / "out.json"
    assert main(["simulate", "--data", str(data), "--rounds", "4", "--baselines", "local,central",
                 "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert doc["schema"] == 1 and doc["config"]["data_dir"] == str(data)
    assert len(doc["rounds"]) == 4
    for row in doc["rounds"]:
        assert ROUND_KEYS <= set(row)
        for key in ("global_accuracy", "personalized_accuracy_mean", "personalized_accuracy_min"):
            assert 0.0 <= row[key] <= 1.0
        assert row["personalized_accuracy_min"] <= row["personalized_accuracy_p10"] <= 1.0
    assert set(doc["baselines"]) == {"local_only", "central"}
    assert 0 <= doc["baselines"]["local_only"]["accuracy_min"] <= doc["baselines"]["local_only"]["accuracy_mean"] <= 1
    assert 0 <= doc["baselines"]["central"]["accuracy"] <= 1
    # Separable blobs: federated personalized models must beat chance (0.5 within a client) clearly.
    assert doc["rounds"][-1]["personalized_accuracy_mean"] > 0.8
    assert (tmp_path / "out.png").stat().st_size > 1000


def test_a_data_folder_named_like_a_shipped_dataset_gets_a_model_for_its_data(tmp_path):
    """The default model is chosen by the data's name; a --data folder called mnist5k holding 23
    features once got the MNIST model (784 inputs) and was refused as not fitting it."""
    data = tmp_path / "mnist5k"
    _write_blob_clients(data, clients=2)
    out = tmp_path / "run.json"
    assert main(["simulate", "--data", str(data), "--rounds", "1", "--quiet", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["rounds"][0]["committed"]


def test_digits_round_accounting(tmp_path):
    cfg = sim_config(dataset="digits", devices=6, rounds=3, clients_per_round=4, out_dir=str(tmp_path))
    result = run_simulation(cfg)
    assert [r["round"] for r in result.rounds] == [1, 2, 3]
    for row in result.rounds:
        assert row["committed"] and row["participants"] == 4 and row["selected"] == 6  # ceil(4 * 1.3) = 6
        assert 0 < row["bytes_up"] < row["bytes_up_dense"]  # int8 on the wire vs fp32 dense
        assert row["bytes_down"] > 0
    # Over-selected devices that reported after the round closed are rejected as stale.
    assert result.summary["rejections"].get("stale_round", 0) == 3 * 2


def test_same_seed_same_run(tmp_path):
    runs = [run_simulation(sim_config(dataset="digits", devices=4, rounds=2, clients_per_round=4,
                                     out_dir=str(tmp_path / str(i)))) for i in range(2)]
    for a, b in zip(runs[0].rounds, runs[1].rounds):
        assert a["personalized_accuracy_mean"] == b["personalized_accuracy_mean"]
        assert a["global_accuracy"] == b["global_accuracy"]


@pytest.mark.slow
def test_demo_default_personalization_beats_global(tmp_path):
    """The README demo's claim: MNIST-5k, 20 devices, Dirichlet 0.1."""
    result = run_simulation(sim_config(out_dir=str(tmp_path)))
    last = result.rounds[-1]
    assert last["personalized_accuracy_mean"] >= 0.90
    assert last["personalized_accuracy_mean"] >= last["global_accuracy"] + 0.03


@pytest.mark.ort_training
def test_ort_training_backend_runs_a_fleet(tmp_path):
    from fedge.edge_runtime.trainer import available_backends

    if "ort-training" not in available_backends():
        pytest.skip("onnxruntime-training not installed")
    result = run_simulation(sim_config(dataset="digits", devices=4, rounds=2, clients_per_round=4, lr=0.1,
                                      backend="ort-training", out_dir=str(tmp_path)))
    assert result.config["backend"] == "ort-training"
    assert all(r["committed"] for r in result.rounds)  # momentum defaulted to 0: no declines
    assert result.summary["declines"] == {}


def test_new_devices_without_test_examples_are_counted_apart(tmp_path, capsys):
    """--new-devices once reported count K with means over fewer devices, those with x_test, and
    never said so."""
    data = tmp_path / "clients"
    _write_blob_clients(data, clients=5)
    last = data / "site-4.npz"
    arrays = dict(np.load(last))
    np.savez(last, **{**arrays, "x_test": arrays["x_test"][:0], "y_test": arrays["y_test"][:0]})
    out = tmp_path / "out.json"
    assert main(["simulate", "--data", str(data), "--rounds", "1", "--new-devices", "2", "--json", str(out)]) == 0
    n = json.loads(out.read_text())["new_devices"]
    assert (n["count"], n["evaluated"]) == (2, 1)
    assert "new devices (2, never trained, 1 with test examples)" in capsys.readouterr().out
