"""A round's evaluated_devices counts the devices whose scores its numbers rest on: a --data
file with an empty test split (allowed) reports an evaluation of no examples, and was counted
(6 evaluated where 5 devices had anything to score)."""

from __future__ import annotations

import json

import numpy as np

from fedge.tools.cli import main


def test_a_device_without_test_examples_is_not_counted_as_evaluated(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 12))
    data = tmp_path / "clients"
    data.mkdir()
    for c, n_test in enumerate((10, 10, 0, 10)):
        y_train, y_test = rng.integers(0, 3, 40), rng.integers(0, 3, n_test)
        x_train = (centers[y_train] + 0.3 * rng.normal(size=(40, 12))).astype(np.float32)
        x_test = (centers[y_test] + 0.3 * rng.normal(size=(n_test, 12))).astype(np.float32)
        np.savez(data / f"site-{c}.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    out = tmp_path / "run.json"
    assert main(["simulate", "--data", str(data), "--rounds", "2", "--clients-per-round", "4", "--quiet",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rounds"]
    assert [r["evaluated_devices"] for r in rows] == [3, 3]  # the files with test examples
