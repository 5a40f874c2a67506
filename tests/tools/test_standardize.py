"""`fedge simulate --standardize`: every device standardizes its features, with the fleet's
pooled statistics or its own (issue 10's silent-failure case: features up to 4,000 made every
round diverge)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from fedge.tools.cli import main
from fedge.tools.datasets import load_npz_dir
from fedge.tools.standardizing import fleet_statistics, standardize_per_device, standardize_with_fleet
from tests.tools.test_run_outcome import _blobs


def test_each_device_uses_its_own_training_statistics(tmp_path):
    data = load_npz_dir(_blobs(tmp_path / "raw", scale=4000.0))
    x0 = data.clients[0].x_train.copy()
    x0[:, 3] = 7.0  # a feature constant on this device: centred, not divided by ~0
    data = dataclasses.replace(data, clients=(dataclasses.replace(data.clients[0], x_train=x0), *data.clients[1:]))
    out = standardize_per_device(data)
    for before, after in zip(data.clients, out.clients):
        x = before.x_train.astype(np.float64)  # oracle: a plain loop over features
        for j in range(x.shape[1]):
            mean, std = x[:, j].mean(), x[:, j].std()
            std = std if std > 4 * 2.0**-23 * max(abs(mean), 1.0) else 1.0
            np.testing.assert_allclose(after.x_train[:, j], (x[:, j] - mean) / std, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(after.x_test[:, j], (before.x_test[:, j] - mean) / std, rtol=1e-5, atol=1e-4)
    assert np.all(out.clients[0].x_train[:, 3] == 0.0)
    assert all(np.array_equal(a.y_train, b.y_train) for a, b in zip(data.clients, out.clients))


def test_the_fleet_statistics_are_those_of_every_training_split_pooled(tmp_path):
    """Oracle: np.mean / np.std of the concatenated training splits, in float64, with the constant
    feature rule written out; a feature of 1e3 + N(0, 1e-3) (sums of squares would lose it) and one
    constant over the whole fleet (centred, std 1) included; devices of unequal size."""
    data = load_npz_dir(_blobs(tmp_path / "raw", scale=4000.0))
    rng = np.random.default_rng(3)
    clients = []
    for i, c in enumerate(data.clients):
        x = c.x_train[: 5 + 7 * i].copy()
        x[:, 0] = 1e3 + rng.normal(0, 1e-3, len(x))
        x[:, 1] = 7.0
        clients.append(dataclasses.replace(c, x_train=x, y_train=c.y_train[: len(x)]))
    data = dataclasses.replace(data, clients=tuple(clients))
    pool = np.concatenate([c.x_train for c in data.clients]).astype(np.float64)
    mean, std = fleet_statistics(data)
    np.testing.assert_allclose(mean, pool.mean(axis=0), rtol=1e-12)
    want = pool.std(axis=0)
    want = np.where(want > 4 * 2.0**-23 * np.maximum(np.abs(pool.mean(axis=0)), 1.0), want, 1.0)
    np.testing.assert_allclose(std, want, rtol=1e-9)
    assert std[1] == 1.0 and std[0] != 1.0
    out = standardize_with_fleet(data)
    for before, after in zip(data.clients, out.clients):
        for split in ("x_train", "x_test"):
            raw = getattr(before, split).astype(np.float64)
            np.testing.assert_allclose(getattr(after, split), (raw - pool.mean(axis=0)) / want, rtol=1e-5, atol=1e-4)


def test_standardize_keeps_devices_from_diverging(tmp_path):
    raw = _blobs(tmp_path / "raw", scale=4000.0)

    def run(name, *flags):
        out = tmp_path / name / "run.json"
        assert main(["simulate", "--data", str(raw), "--rounds", "3", "--json", str(out), "--quiet", *flags]) == 0
        return json.loads(out.read_text())

    plain, scaled = run("plain", "--no-standardize"), run("scaled", "--standardize")
    assert plain["summary"]["declines"].get("diverged", 0) >= 1  # features up to ~2e4: some tasks blow up
    assert scaled["summary"]["declines"].get("diverged", 0) == 0 and scaled["config"]["standardize"] is True
    assert all(r["committed"] for r in scaled["rounds"]) and scaled["rounds"][-1]["global_accuracy"] > 0.9
    assert not any("far from standardized" in f for f in scaled["config"]["data"]["findings"])


def test_the_load_warning_describes_the_standardized_data(tmp_path, capsys):
    """With --standardize the load warning still said "features are far from standardized ...
    (`fedge simulate --standardize` does it on each device)": it looked at the raw files."""
    raw = _blobs(tmp_path / "raw", scale=4000.0)
    run = ["simulate", "--data", str(raw), "--rounds", "1", "--quiet", "--json"]
    assert main([*run, str(tmp_path / "a.json"), "--standardize"]) == 0
    assert "far from standardized" not in capsys.readouterr().err
    assert main([*run, str(tmp_path / "b.json"), "--no-standardize"]) in (0, 1)  # raw: some tasks may diverge
    assert "far from standardized" in capsys.readouterr().err
    oracle = standardize_with_fleet(load_npz_dir(raw))
    for a, b in zip(load_npz_dir(raw, standardize=True).clients, oracle.clients):
        assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.x_test, b.x_test)
