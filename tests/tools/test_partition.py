"""Partitioners: exact coverage, reproducibility, and that each scheme skews what it claims to."""

from __future__ import annotations

import numpy as np
import pytest

from tools.partition import SCHEMES, dirichlet_label_skew, iid, partition, quantity_skew, shards

# 10 balanced classes in shuffled order, like a benchmark's label vector.
Y = np.random.default_rng(123).permutation(np.repeat(np.arange(10), 200))


def _dominant_fraction(parts: list[np.ndarray], y: np.ndarray) -> float:
    """Mean over clients of the share held by the client's most common label."""
    return float(np.mean([np.bincount(y[p]).max() / len(p) for p in parts]))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("num_clients", [1, 7, 20])
def test_disjoint_and_covering(scheme: str, num_clients: int) -> None:
    parts = partition(scheme, Y, num_clients, np.random.default_rng(0))
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 for p in parts)
    merged = np.concatenate(parts)
    assert len(merged) == len(Y)  # no index twice
    np.testing.assert_array_equal(np.sort(merged), np.arange(len(Y)))  # every index once


@pytest.mark.parametrize("scheme", SCHEMES)
def test_seeded_reproducibility(scheme: str) -> None:
    a = partition(scheme, Y, 10, np.random.default_rng(7))
    b = partition(scheme, Y, 10, np.random.default_rng(7))
    c = partition(scheme, Y, 10, np.random.default_rng(8))
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not all(np.array_equal(p, q) for p, q in zip(a, c))


def test_dirichlet_small_alpha_is_skewed_and_iid_is_not() -> None:
    rng = np.random.default_rng(0)
    assert _dominant_fraction(dirichlet_label_skew(Y, 10, 0.1, rng), Y) > 0.5
    assert _dominant_fraction(iid(len(Y), 10, rng), Y) < 0.3
    # Large alpha approaches IID.
    assert _dominant_fraction(dirichlet_label_skew(Y, 10, 100.0, rng), Y) < 0.3


def test_dirichlet_min_size_honoured_and_auto_reduced() -> None:
    for seed in range(5):
        parts = dirichlet_label_skew(Y, 10, 0.3, np.random.default_rng(seed), min_size=20)
        assert min(len(p) for p in parts) >= 20
    # A request above a tenth of the average share is capped there: 2000 // (10 * 20) = 10.
    parts = dirichlet_label_skew(Y, 20, 0.3, np.random.default_rng(0), min_size=500)
    assert min(len(p) for p in parts) >= 10
    # ... but never below 2: 2000 // (10 * 100) = 2.
    parts = dirichlet_label_skew(Y, 100, 0.5, np.random.default_rng(0), min_size=10)
    assert min(len(p) for p in parts) >= 2


def test_dirichlet_impossible_request_says_what_to_change() -> None:
    y = np.repeat([0, 1], 10)
    with pytest.raises(ValueError, match="larger alpha"):
        dirichlet_label_skew(y, 20, 0.01, np.random.default_rng(0), min_size=1)
    with pytest.raises(ValueError, match="alpha"):
        dirichlet_label_skew(y, 2, 0.0, np.random.default_rng(0))


@pytest.mark.parametrize("num_clients,per", [(5, 2), (10, 2), (10, 3), (50, 2), (100, 1), (20, 5), (40, 10)])
def test_shards_give_exactly_classes_per_client_labels(num_clients: int, per: int) -> None:
    parts = shards(Y, num_clients, per, np.random.default_rng(num_clients + per))
    assert [len(np.unique(Y[p])) for p in parts] == [per] * num_clients
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= per  # shards of one class differ by at most one example


def test_shards_fewer_shards_than_classes_still_cover() -> None:
    parts = shards(Y, 2, 2, np.random.default_rng(0))  # 4 shards over 10 labels: shards mix labels
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(Y)))


def test_shards_reject_more_shards_than_examples() -> None:
    with pytest.raises(ValueError, match="shards"):
        shards(np.arange(10) % 2, 10, 2, np.random.default_rng(0))


def test_quantity_skew_sizes_unequal_with_floor() -> None:
    parts = quantity_skew(2000, 20, np.random.default_rng(0), sigma=1.0, min_size=30)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 30
    assert sizes.max() > 2 * sizes.min()
    # Labels stay IID: no client is dominated by one class.
    assert _dominant_fraction(parts, Y) < 0.35


def test_quantity_skew_min_size_lowered_when_it_cannot_fit() -> None:
    parts = quantity_skew(50, 10, np.random.default_rng(0), min_size=10)  # 10 x 10 > 50
    assert min(len(p) for p in parts) >= 5


def test_iid_sizes_match_array_split() -> None:
    parts = iid(103, 10, np.random.default_rng(0))
    assert sorted(len(p) for p in parts) == sorted(len(p) for p in np.array_split(np.arange(103), 10))


def test_dispatch_errors() -> None:
    with pytest.raises(ValueError, match="iid, dirichlet, shards, quantity"):
        partition("pathological", Y, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="exceeds"):
        partition("iid", Y[:5], 6, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_clients"):
        partition("iid", Y, 0, np.random.default_rng(0))
