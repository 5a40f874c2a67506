"""WeightedMean against two independent references: the naive loop and a numpy einsum."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.aggregate import WeightedMean, weighted_mean_naive

SHAPES = {"a.weight": (7, 5), "a.bias": (5,), "scalar": ()}


def _updates(rng: np.random.Generator, clients: int) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    updates = [{k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(clients)]
    weights = list(rng.uniform(0.01, 100.0, size=clients))
    return updates, weights


def _einsum_mean(updates, weights) -> dict[str, np.ndarray]:
    w = np.asarray(weights, np.float64)  # (clients,)
    out = {}
    for name in SHAPES:
        stacked = np.stack([u[name].astype(np.float64) for u in updates])  # (clients, *shape)
        out[name] = np.einsum("c,c...->...", w, stacked) / w.sum()
    return out


def _streamed(updates, weights) -> dict[str, np.ndarray]:
    acc = WeightedMean()
    for u, w in zip(updates, weights):
        acc.add(u, w)
    return acc.mean()


@pytest.mark.parametrize("clients", [1, 2, 50, 500])
def test_streaming_mean_matches_naive_loop_and_einsum(clients):
    updates, weights = _updates(np.random.default_rng(clients), clients)
    got = _streamed(updates, weights)
    naive = weighted_mean_naive(updates, weights)
    einsum = _einsum_mean(updates, weights)
    assert set(got) == set(SHAPES)
    for name, shape in SHAPES.items():
        assert got[name].shape == shape
        assert got[name].dtype == np.float32
        np.testing.assert_allclose(got[name], naive[name], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[name], einsum[name], rtol=1e-6, atol=1e-7)


def test_weights_matter():
    """Guards the oracle itself: with unequal weights the result is not the plain mean."""
    updates, _ = _updates(np.random.default_rng(7), 3)
    weights = [1.0, 10.0, 100.0]
    got = _streamed(updates, weights)
    plain = {k: np.mean([u[k] for u in updates], axis=0) for k in SHAPES}
    assert not np.allclose(got["a.weight"], plain["a.weight"], rtol=1e-3)
    np.testing.assert_allclose(got["a.weight"], _einsum_mean(updates, weights)["a.weight"], rtol=1e-6)


def test_single_client_mean_is_its_update_whatever_the_weight():
    updates, _ = _updates(np.random.default_rng(3), 1)
    got = _streamed(updates, [123.456])
    for name in SHAPES:
        np.testing.assert_allclose(got[name], updates[0][name], rtol=1e-6)


def test_order_of_contributions_does_not_matter():
    rng = np.random.default_rng(11)
    updates, weights = _updates(rng, 60)
    reference = _streamed(updates, weights)
    for _ in range(5):
        order = rng.permutation(len(updates))
        got = _streamed([updates[i] for i in order], [weights[i] for i in order])
        for name in SHAPES:
            np.testing.assert_allclose(got[name], reference[name], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("weight", [0.0, -1.0, -1e-9, float("nan")])
def test_non_positive_weight_is_refused_and_changes_nothing(weight):
    acc = WeightedMean()
    acc.add({"x": np.ones(3, np.float32)}, 2.0)
    with pytest.raises(ValueError):
        acc.add({"x": np.full(3, 100.0, np.float32)}, weight)
    assert acc.count == 1 and acc.total_weight == 2.0
    np.testing.assert_array_equal(acc.mean()["x"], np.ones(3, np.float32))


def test_mean_of_nothing_is_refused():
    with pytest.raises(ValueError):
        WeightedMean().mean()


def test_memory_stays_one_array_per_param():
    updates, weights = _updates(np.random.default_rng(5), 500)
    acc = WeightedMean()
    for u, w in zip(updates, weights):
        acc.add(u, w)
    assert acc.count == 500
    assert set(acc.sums) == set(SHAPES)
    for name, shape in SHAPES.items():
        assert isinstance(acc.sums[name], np.ndarray)
        assert acc.sums[name].shape == shape
    np.testing.assert_allclose(acc.total_weight, sum(weights), rtol=1e-12)


def test_add_does_not_alias_the_callers_arrays():
    first = {"x": np.ones(4, np.float64)}
    acc = WeightedMean()
    acc.add(first, 1.0)
    acc.add({"x": np.full(4, 3.0)}, 1.0)
    np.testing.assert_array_equal(first["x"], np.ones(4))  # the accumulator summed into its own buffer
    np.testing.assert_allclose(acc.mean()["x"], np.full(4, 2.0))
