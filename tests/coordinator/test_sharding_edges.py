"""The sharded coordinator's pure rules at their documented edges (the mutation6-sharding audit):
a shard group's fewest inputs (never one), a partial sum's weight (> 0), the mean of nothing, the
leader adding nothing itself, and a DP round's merged sum (every update weight 1; one update is
noised like many). Oracles: the module docstrings' formulas written as integer arithmetic, and a
fake DpMean that records what the leader hands it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.coordinator.sharding.groups import min_inputs, shard_groups
from fedge.coordinator.sharding.leader import ShardSums
from fedge.coordinator.sharding.privacy import ShardDpSums, UnboundedSum
from fedge.coordinator.sharding.sealed import SealedAggregator
from fedge.coordinator.sharding.sums import PartialSum, mean


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def test_a_group_never_needs_fewer_than_two_inputs_even_when_its_share_of_the_quorum_is_one():
    """min_inputs = max(2, ceil(q n_g / n)): a group of 3 among 40 with q = 10 has a share of
    ceil(0.75) = 1, and the sum of one input is that input: 2."""
    assert min_inputs(3, 40, 10) == 2
    assert min_inputs(13, 40, 3) == 2  # ceil(0.975) = 1
    assert min_inputs(8, 40, 30) == 6  # the share itself where it is >= 2
    ids = tuple(f"d{i}" for i in range(40))
    for quorum in (1, 4, 10, 30, 40):
        groups = shard_groups(ids, 8, 3, quorum=quorum)
        for g in groups:
            assert g.min_inputs == max(2, _ceil_div(quorum * len(g.members), 40)), (quorum, g)
        if quorum <= 4:  # every group's share is one at most: each still needs two
            assert {g.min_inputs for g in groups} == {2}


@pytest.mark.parametrize("weight", [0.0, -1.0, float("nan")])
def test_a_partial_sum_refuses_a_weight_that_is_not_positive_and_keeps_what_it_had(weight):
    part = PartialSum()
    part.add({"a": np.ones(3, np.float32)}, 2.0)
    with pytest.raises(ValueError, match="weight must be > 0"):
        part.add({"a": np.full(3, 5, np.float32)}, weight)
    assert part.count == 1 and part.weight == 2.0
    assert np.array_equal(part.sums["a"], np.full(3, 2.0))


def test_the_mean_of_no_contribution_is_refused_not_a_nan_model():
    with pytest.raises(ValueError, match="no contributions"):
        mean(PartialSum())
    empty = PartialSum({"a": np.zeros(2)}, 0.0, 0)  # a shard's sum row read back with nothing counted
    with pytest.raises(ValueError, match="no contributions"):
        mean(empty)


class _Tables:
    """What a leader's seal returns: the shards' partial sums."""

    def __init__(self, parts):
        self.parts, self.seals = parts, 0

    def seal(self, round_id, shards, shapes, check):
        self.seals += 1
        return self.parts


def test_the_leader_adds_no_update_itself_in_any_sharded_round():
    for aggregator in (SealedAggregator(object(), _Tables([]), 1, 2, {}, None), ShardSums(_Tables([]), 1, 2, {}, None)):
        with pytest.raises(TypeError, match="sharded round's updates are"):
            aggregator.add({"a": np.zeros(2)}, SimpleNamespace(device_id="d", weight=1.0))


class _DpMean:
    """The round's DpMean as the leader uses it: what it was handed; result() as DpMean's, which
    refuses a round with no contribution."""

    def __init__(self):
        self.handed, self.released = [], False

    def add_clipped_sum(self, sums, count):
        self.handed.append(({k: v.copy() for k, v in sums.items()}, count))

    def result(self):
        if not self.handed:
            raise ValueError("no contributions to average")
        self.released = True
        sums, count = self.handed[0]
        return {k: v / count for k, v in sums.items()}

    def carry(self):
        return {}


def _clipped(values, weights) -> list[PartialSum]:
    parts = []
    for vs, ws in zip(values, weights):
        part = PartialSum()
        for v, w in zip(vs, ws):
            part.add({"a": np.asarray(v, np.float32)}, w)
        parts.append(part)
    return parts


def test_a_dp_round_of_one_counted_update_hands_it_to_the_noise_once():
    """The merged clipped sum goes to DpMean once, however few it holds: a round of one update is
    noised and released as one of many, not refused as empty."""
    inner = _DpMean()
    tables = _Tables(_clipped([[], [[0.5, -0.25]]], [[], [1.0]]))
    dp = ShardDpSums(inner, tables, 3, 2, {"a": (2,)}, None)
    out = dp.result()
    assert len(inner.handed) == 1 and inner.handed[0][1] == 1
    assert np.array_equal(inner.handed[0][0]["a"], np.array([0.5, -0.25]))
    assert np.array_equal(out["a"], np.array([0.5, -0.25])) and dp.released
    dp.result()
    assert tables.seals == 1 and len(inner.handed) == 1  # sealed and handed once


def test_a_dp_round_whose_sum_holds_a_contribution_not_weighted_one_releases_nothing():
    """Sensitivity S needs weight 1 per clipped update (merged weight == count): a worker that
    weighted one update by 3 examples is refused by name before any noise is drawn."""
    inner = _DpMean()
    dp = ShardDpSums(inner, _Tables(_clipped([[[0.1, 0.1]], [[0.2, 0.0], [0.0, 0.3]]], [[1.0], [1.0, 3.0]])), 4, 2,
                     {"a": (2,)}, None)
    with pytest.raises(UnboundedSum, match="3 clipped updates weigh 5"):
        dp.result()
    assert inner.handed == [] and not dp.released
    assert math.isclose(sum(p.weight for p in dp.tables.parts), 5.0)


def test_a_partial_sum_s_bytes_are_in_sorted_name_order_whatever_order_its_deltas_came_in():
    """sums.py: every tensor's float64 buffer in sorted name order; a delta whose names arrive in
    another order (a manifest listing "z" before "a") must read back under the same names."""
    shapes = {"z": (2,), "a": (3,)}
    part = PartialSum()
    part.add({"z": np.array([1.0, 2.0], np.float32), "a": np.array([3.0, 4.0, 5.0], np.float32)}, 2.0)
    want = np.array([6.0, 8.0, 10.0, 2.0, 4.0], "<f8").tobytes()  # a's sums, then z's: a plain concatenation
    assert part.to_bytes() == want
    back = PartialSum.from_bytes(part.to_bytes(), shapes, part.weight, part.count)
    assert np.array_equal(back.sums["z"], [2.0, 4.0]) and np.array_equal(back.sums["a"], [6.0, 8.0, 10.0])
