"""The Aggregator seam: chosen by config, fed by a real Coordinator round, rebuilt by restart.

Oracle: a keep-all aggregator computing the coordinate-wise median, checked against
np.median of the deltas that crossed the wire and were accepted (a rejected one is not)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.aggregate import (
    AGGREGATORS,
    Aggregator,
    KeepAll,
    MeanAggregator,
    UpdateMeta,
    make_aggregator,
    register_aggregator,
    weighted_mean_naive,
)
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.memory_store import MemoryStore
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import (
    ManualDevice,
    assert_params,
    copy_params,
    decoded,
    make_fleet,
    nan_payload,
    random_delta,
)
from tests.tiny_model import build_tiny_model


def _median(stack: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return np.median(stack, axis=0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.fixture
def median():
    factory = lambda _ctx: KeepAll(_median)  # noqa: E731
    register_aggregator("test-median", factory)
    yield "test-median"
    del AGGREGATORS["test-median"]


def test_a_real_round_commits_the_coordinate_wise_median_of_the_accepted_deltas(model, tmp_path, median):
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35), aggregator=median)
    old = copy_params(fleet.coordinator.state.params)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record is not None and record.committed and record.reports == 3

    deltas = [decoded(u) for u in fleet.updates()]
    assert len(deltas) == 3
    want = {k: old[k].astype(np.float64) + np.median(np.stack([d[k] for d in deltas]), axis=0) for k in old}
    assert_params(fleet.coordinator.state.params, want)
    # The oracle has teeth: the example-weighted mean lands elsewhere.
    mean = weighted_mean_naive(deltas, [u.num_examples for u in fleet.updates()])
    name = "head_global.weight"
    assert not np.allclose(fleet.coordinator.state.params[name], old[name] + mean[name], rtol=1e-4, atol=1e-6)


def test_a_rejected_update_is_not_among_the_median_inputs(model, tmp_path, median):
    fleet = make_fleet(model, tmp_path, clients_per_round=3, aggregator=median)
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate((5, 8, 13))]
    fleet.drain()
    old = copy_params(fleet.coordinator.state.params)
    shapes = {k: v.shape for k, v in old.items()}
    rng = np.random.default_rng(3)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    sent = []
    for i, m in enumerate(devices):
        if i == 1:  # first a poisoned frame, then an honest update
            m.send(encode_message(m.update(random_delta(shapes, rng), update_id="bad", payload=nan_payload(
                random_delta(shapes, rng)))))
        delta = random_delta(shapes, rng)
        sent.append(delta)
        m.send(encode_message(m.update(delta, update_id=f"ok{i}")))
    fleet.drain()
    assert fleet.coordinator.rejections["non_finite"] == 1
    assert fleet.coordinator.round.aggregator.count == 3
    record = fleet.coordinator.tick()
    assert record.committed
    want = {k: old[k].astype(np.float64) + np.median(np.stack([d[k] for d in sent]), axis=0) for k in old}
    assert_params(fleet.coordinator.state.params, want)


@pytest.mark.parametrize("store_kind", ["sqlite", "memory"])
def test_restart_replays_a_keep_all_aggregator_bit_identically(model, tmp_path, median, store_kind):
    def store():
        return RoundStore(tmp_path / "state.db") if store_kind == "sqlite" else memory

    memory = MemoryStore()
    fleet = make_fleet(model, tmp_path, clients_per_round=3, store=store(), aggregator=median)
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate((5, 8, 13))]
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(11)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    for i, m in enumerate(devices[:2]):
        m.send(encode_message(m.update(random_delta(shapes, rng), update_id=f"x{i}")))
    fleet.drain()
    old = fleet.coordinator.round.aggregator
    new = fleet.restart(store=store()).round.aggregator
    assert isinstance(new, KeepAll) and new is not old and new.count == 2
    assert new.metas == old.metas == [UpdateMeta("m0", 5.0), UpdateMeta("m1", 8.0)]
    for a, b in zip(old.deltas, new.deltas):
        assert {k: v.tobytes() for k, v in a.items()} == {k: v.tobytes() for k, v in b.items()}


def test_aggregators_are_chosen_by_name_and_follow_the_protocol(median):
    assert isinstance(make_aggregator("mean"), MeanAggregator)
    assert isinstance(make_aggregator(median), KeepAll)
    assert isinstance(make_aggregator("mean"), Aggregator) and isinstance(make_aggregator(median), Aggregator)
    assert make_aggregator("mean") is not make_aggregator("mean")  # a fresh one per round
    assert CoordinatorConfig(aggregator=median).aggregator == median
    with pytest.raises(ConfigError, match="aggregator"):
        CoordinatorConfig(aggregator="krum-not-registered")
    with pytest.raises(ConfigError):
        make_aggregator("krum-not-registered")
    with pytest.raises(ValueError):
        register_aggregator("mean", lambda _ctx: KeepAll(_median))  # a name cannot be taken over


def test_mean_aggregator_is_the_weighted_mean_and_keep_all_sees_every_delta_in_order():
    rng = np.random.default_rng(0)
    deltas = [{"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=()).astype(np.float32)}
              for _ in range(5)]
    weights = [3.0, 1.0, 7.0, 2.0, 5.0]
    mean, seen = MeanAggregator(), []
    keep = KeepAll(lambda stack, w: (seen.append((stack.shape, w.tolist())), stack[0])[1])
    for i, (d, w) in enumerate(zip(deltas, weights)):
        mean.add(d, UpdateMeta(f"d{i}", w))
        keep.add(d, UpdateMeta(f"d{i}", w))
    want = weighted_mean_naive(deltas, weights)
    for k in want:
        np.testing.assert_allclose(mean.result()[k], want[k], rtol=1e-6)
    got = keep.result()
    assert sorted(seen) == sorted([((5, 3, 2), weights), ((5,), weights)])
    assert all(got[k].dtype == np.float32 and np.array_equal(got[k], deltas[0][k]) for k in got)
    with pytest.raises(ValueError):
        KeepAll(_median).result()
    with pytest.raises(ValueError):
        keep.add(deltas[0], UpdateMeta("z", 0.0))
