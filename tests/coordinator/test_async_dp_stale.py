"""Async mode under central DP: a stale update is clipped to S, then weighted by f(s) (FedBuff's
order, as the norm bound does: async_mode/staleness.py). Scaled first and clipped after, an
update over S / f(s) lost its staleness discount: a stale update as heavy as that counted as
much as a fresh one. Oracle: a plain loop of f(s_i) clip_S(Δ_i) over the wire deltas."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.aggregate import UpdateMeta
from fedge.coordinator.dp.round import DpMean, RoundPlan
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_async_server import _dp_fleet, _send
from tests.tiny_model import build_tiny_model

S = 0.5  # _dp_fleet's clip_norm


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _clipped(delta, bound):
    """clip_S(Δ): a plain loop, float64."""
    norm = np.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in delta.values()))
    return {k: np.asarray(v, np.float64) * min(1.0, bound / norm) for k, v in delta.items()}


def test_a_stale_update_over_the_clip_keeps_its_staleness_discount(model, tmp_path):
    fleet, devs = _dp_fleet(model, tmp_path, devices=3, buffer_size=2)
    c = fleet.coordinator
    c.tick()
    fleet.drain()
    rng = np.random.default_rng(11)
    for d in devs[:2]:  # the first buffer: m2 still trains on v0
        _send(fleet, d, random_delta(c.shapes, rng, scale=0.001))
    assert c.state.version == 1 and c.machine.flight("m2").base_version == 0
    heavy = random_delta(c.shapes, rng, scale=1.0)  # far over S / f(1) = 0.71
    _send(fleet, devs[2], heavy)
    assert c.machine.buffered == 1
    want = {k: 2.0 ** -0.5 * v for k, v in _clipped(heavy, S).items()}  # f(1) clip_S(Δ)
    got = c.round.aggregator.sums
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=0)


def test_dp_mean_clips_then_weights_and_a_sync_update_keeps_its_bits():
    plan = RoundPlan(10, 2, 1.0, S, 2, 1e-5, 50.0, 1.0)
    rng = np.random.default_rng(2)
    deltas = [{"w": rng.normal(size=(3, 4)).astype(np.float32)} for _ in range(3)]
    agg = DpMean(plan, lambda: np.random.default_rng(0))
    for delta, f in zip(deltas, (1.0, 0.5, 0.25)):
        agg.add(delta, UpdateMeta("d", 1.0, staleness_weight=f))
    want = sum(f * _clipped(d, S)["w"] for d, f in zip(deltas, (1.0, 0.5, 0.25)))
    np.testing.assert_allclose(agg.sums["w"], want, rtol=1e-12, atol=0)
    assert agg.max_norm <= S * (1 + 1e-9)
    sync = DpMean(plan, lambda: np.random.default_rng(0))  # f = 1: the clipped delta, bit for bit
    sync.add(deltas[0], UpdateMeta("d", 1.0))
    assert sync.sums["w"].tobytes() == _clipped(deltas[0], S)["w"].tobytes()
    with pytest.raises(ValueError, match="staleness weight"):
        agg.add(deltas[0], UpdateMeta("d", 1.0, staleness_weight=1.5))
