"""The partitioners on label vectors other than MNIST's: scikit-learn's digits (10 near-equal
classes), wine (3 classes of 59/71/48), breast cancer (2 classes of 212/357) and the labels of
the synthetic(α, β) generator (argmax labels, far from balanced). Checked by plain loops:
every example used exactly once (counted one by one), sizes summing to n, each part sorted
int64, the same seed giving the same split, shards giving each client exactly its labels, and
impossible splits refused with the partitioner's ValueError (build_federated names them as
DatasetError for a user: tests/tools/test_datasets*.py)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import datasets as skd

from fedge.tools.partition import dirichlet_label_skew, dirichlet_per_client, iid, partition, quantity_skew, shards
from fedge.tools.synthetic import synthetic


def _synthetic_labels() -> np.ndarray:
    data = synthetic(30, 1.0, 1.0, dim=10, classes=6, min_examples=10, max_examples=60, seed=3)
    return np.concatenate([np.concatenate([c.y_train, c.y_test]) for c in data.clients])


LABELS = {
    "digits": lambda: skd.load_digits().target,
    "wine": lambda: skd.load_wine().target,
    "breast_cancer": lambda: skd.load_breast_cancer().target,
    "synthetic": _synthetic_labels,
}


@pytest.fixture(scope="module", params=sorted(LABELS))
def labels(request) -> tuple[str, np.ndarray]:
    return request.param, np.asarray(LABELS[request.param]())


def _each_used_once(parts: list[np.ndarray], n: int) -> None:
    seen = [0] * n
    for p in parts:
        assert p.dtype == np.int64 and all(a < b for a, b in zip(p.tolist(), p.tolist()[1:]))  # sorted, no repeat
        for i in p.tolist():
            assert 0 <= i < n
            seen[i] += 1
    assert seen == [1] * n
    assert sum(len(p) for p in parts) == n


SPLITS = [("iid", {}), ("quantity", {}), ("dirichlet", {"alpha": 0.05}), ("dirichlet", {"alpha": 1.0}),
          ("dirichlet", {"alpha": 100.0}), ("shards", {"classes_per_client": 1}),
          ("shards", {"classes_per_client": 2})]


@pytest.mark.parametrize("scheme,options", SPLITS)
@pytest.mark.parametrize("clients", [1, 3, 17])
def test_every_example_is_used_exactly_once_and_seeds_repeat(labels, scheme, options, clients):
    name, y = labels
    if scheme == "shards" and clients * options["classes_per_client"] < len(np.unique(y)):
        clients = len(np.unique(y))  # fewer shards than labels is the documented mixed fallback: tested below
    parts = partition(scheme, y, clients, np.random.default_rng(5), **options)
    assert len(parts) == clients
    _each_used_once(parts, len(y))
    again = partition(scheme, y, clients, np.random.default_rng(5), **options)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if clients > 1:
        other = partition(scheme, y, clients, np.random.default_rng(6), **options)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


@pytest.mark.parametrize("clients,per", [(3, 1), (6, 2), (20, 2), (40, 1)])
def test_shards_give_each_client_exactly_its_labels(labels, clients, per):
    name, y = labels
    classes = len(np.unique(y))
    if not clients * per >= classes >= per:  # the mixed fallback (fewer shards than labels): coverage only
        _each_used_once(shards(y, clients, per, np.random.default_rng(0)), len(y))
        return
    sizes = np.bincount(y)
    if np.minimum(sizes, clients).sum() < clients * per:
        with pytest.raises(ValueError, match="shards"):
            shards(y, clients, per, np.random.default_rng(0))
        return
    parts = shards(y, clients, per, np.random.default_rng(0))
    _each_used_once(parts, len(y))
    for p in parts:
        assert len(set(y[p].tolist())) == per


def test_fewer_shards_than_labels_still_cover(labels):
    name, y = labels
    _each_used_once(shards(y, 1, 2, np.random.default_rng(0)), len(y))


@pytest.mark.parametrize("alpha", [0.01, 0.3])
def test_per_client_dirichlet_sizes_are_as_even_as_n_allows(labels, alpha):
    name, y = labels
    parts = dirichlet_per_client(y, 9, alpha, np.random.default_rng(1))
    _each_used_once(parts, len(y))
    assert sorted(len(p) for p in parts) == sorted(len(a) for a in np.array_split(np.arange(len(y)), 9))


def test_impossible_splits_are_refused_by_name(labels):
    name, y = labels
    n = len(y)
    rng = np.random.default_rng(0)
    for call in (lambda: iid(n, n + 1, rng), lambda: iid(n, 0, rng), lambda: quantity_skew(n, n + 1, rng),
                 lambda: dirichlet_label_skew(y, n + 1, 0.5, rng)):
        with pytest.raises(ValueError, match="num_clients"):
            call()
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_label_skew(y, 3, 0.0, rng)
    with pytest.raises(ValueError, match="shards"):
        shards(y, n, 2, rng)  # 2n shards of n examples
    with pytest.raises(ValueError, match="cannot give each"):
        dirichlet_per_client(y, 4, 0.5, rng, min_size=n // 4 + 1)
    with pytest.raises(ValueError, match="unknown partition scheme"):
        partition("zipf", y, 3, rng)


@pytest.mark.parametrize("scheme,options", SPLITS)
def test_float_labels_with_nan_are_each_used_once(scheme, options):
    """partition.py promises every index exactly once; the Dirichlet split found a class's
    members by y == label, which NaN never equals, and dropped them (20 of 60 here)."""
    y = np.array([0.0, 1.0, np.nan] * 20)
    _each_used_once(partition(scheme, y, 3, np.random.default_rng(0), **options), len(y))


def test_the_dirichlet_split_of_ordinary_labels_is_the_one_earlier_versions_drew():
    """Finding a class's members by np.unique's inverse picks the same members as y == label, in
    the same order, so every seed's split is unchanged (reference: y == label, by hand)."""
    y = skd.load_wine().target
    parts = dirichlet_label_skew(y, 5, 0.3, np.random.default_rng(8))
    rng = np.random.default_rng(8)
    n = len(y)
    need = min(10, max(2, n // (10 * 5)))  # min_size 10, lowered to a tenth of the average share
    while True:  # the documented draw, written out
        sizes, cut = np.zeros(5, np.int64), []
        for label in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == label))
            p = rng.dirichlet(np.full(5, 0.3)) * (sizes < n / 5)
            cuts = (np.cumsum(p / p.sum()) * len(idx)).astype(np.int64)[:-1]
            cut.append(np.split(idx, cuts))
            sizes += np.array([len(c) for c in cut[-1]])
        if sizes.min() >= need:
            break
    want = [np.sort(np.concatenate([c[k] for c in cut])) for k in range(5)]
    assert all(np.array_equal(a, b) for a, b in zip(parts, want))
