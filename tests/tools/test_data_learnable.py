"""A --data folder a model can learn nothing from (tools/learnable.py): training labels of one
class in total (it trained a 2-output model, reported a global accuracy of 1.0 and warned only
that label 1 never appears), or features that never vary in any training example (standardized
to zeros, then the constant guess). One file of another label, or one example that differs in
one feature, is enough to load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import load_npz_dir


def _save(path: Path, y_train: np.ndarray, y_test: np.ndarray) -> None:
    rng = np.random.default_rng(len(path.name))
    np.savez(path, x_train=rng.normal(size=(len(y_train), 4)).astype(np.float32), y_train=y_train,
             x_test=rng.normal(size=(len(y_test), 4)).astype(np.float32), y_test=y_test)


@pytest.mark.parametrize("label", [0, 7])
def test_one_class_in_total_is_refused(tmp_path: Path, label: int) -> None:
    for k in range(3):
        _save(tmp_path / f"d{k}.npz", np.full(6, label), np.full(2, label))
    with pytest.raises(DatasetError, match=f"every file's y_train holds only label {label} \\(3 file"):
        load_npz_dir(tmp_path)


def test_a_test_label_the_training_splits_lack_does_not_count(tmp_path: Path) -> None:
    for k in range(2):
        _save(tmp_path / f"d{k}.npz", np.zeros(6, np.int64), np.array([0, 1]))
    with pytest.raises(DatasetError, match="only label 0"):
        load_npz_dir(tmp_path)


def test_devices_of_one_class_each_load(tmp_path: Path) -> None:
    _save(tmp_path / "a.npz", np.zeros(6, np.int64), np.zeros(2, np.int64))
    _save(tmp_path / "b.npz", np.ones(6, np.int64), np.ones(2, np.int64))
    data = load_npz_dir(tmp_path)
    assert data.num_classes == 2 and [set(c.y_train.tolist()) for c in data.clients] == [{0}, {1}]


@pytest.mark.parametrize("value", [0.0, 3.0])
def test_features_that_never_vary_are_refused(tmp_path: Path, value: float) -> None:
    for k in range(3):
        np.savez(tmp_path / f"d{k}.npz", x_train=np.full((6, 4), value, np.float32), y_train=np.arange(6) % 2,
                 x_test=np.arange(8, dtype=np.float32).reshape(2, 4), y_test=np.array([0, 1]))  # test varies: no help
    same = f"every training example of every file has the same features \\({value:g}, "
    with pytest.raises(DatasetError, match=same):
        load_npz_dir(tmp_path)


def test_one_feature_differing_in_one_example_loads(tmp_path: Path) -> None:
    for k in range(3):
        x = np.zeros((6, 4), np.float32)
        if k == 2:
            x[5, 3] = 1.0
        np.savez(tmp_path / f"d{k}.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.array([0, 1]))
    assert len(load_npz_dir(tmp_path).clients) == 3


def test_each_file_constant_but_files_differing_loads(tmp_path: Path) -> None:
    """A sensor that never moved on one device, another value on another: the fleet's features vary."""
    for k in range(2):
        np.savez(tmp_path / f"d{k}.npz", x_train=np.full((6, 4), float(k), np.float32), y_train=np.full(6, k),
                 x_test=np.full((2, 4), float(k), np.float32), y_test=np.full(2, k))
    assert load_npz_dir(tmp_path).num_classes == 2
