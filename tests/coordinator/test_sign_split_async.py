"""[robust.sign] in async (FedBuff) mode: a buffer's flush runs the gated sign split on the
buffer's updates with the buffer's (seed, buffer id) RNG, records what it left out as sync mode
does (log, fedge_updates_sign_split_total, the per-device tally), and a coordinator restarted
with the buffer half full replays it into the same split and the same bits.

Oracle: a plain numpy loop of norm_bound's cold start (each float32 wire delta clipped to 2 x
the buffer's median norm, left out over 4 x), clip then weight by (1 + s)^-a, the flipped updates
dropped by hand, the weighted mean of the rest."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.coordinator.aggregate import UpdateMeta
from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.async_mode.staleness import staleness_weight
from fedge.coordinator.metrics import CoordinatorMetrics
from fedge.coordinator.robust.aggregators import RobustConfig, RobustState, make_aggregator
from fedge.coordinator.robust.sign_split import SignSplitConfig
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, copy_params, make_fleet, refuse_first_commit
from tests.coordinator.test_sign_split import non_iid_round
from tests.tiny_model import build_tiny_model

K = 10
FLIPPED = (3, 7)  # the buffer positions whose updates are sign-flipped
SIGN = RobustConfig(sign=SignSplitConfig(gap=4.0))  # share 0.1: the buffer's RNG picks the columns
EXPONENT = 0.5  # AsyncConfig's default staleness exponent


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _flat(delta) -> np.ndarray:
    return np.concatenate([np.asarray(delta[k], np.float64).ravel() for k in sorted(delta)])


def _deltas(shapes, seed: int) -> list[dict]:
    """K float32 deltas of ~0.01 x the non-IID rows, those at FLIPPED negated."""
    names = sorted(shapes)
    sizes = [int(np.prod(shapes[k])) for k in names]
    rows = 0.01 * non_iid_round(np.random.default_rng(seed), sum(sizes), K)
    rows[list(FLIPPED)] *= -1
    return [{k: part.astype(np.float32).reshape(shapes[k]) for k, part in
             zip(names, np.split(row, np.cumsum(sizes)[:-1]))} for row in rows]


def cold_start_mean(flats, weights, factors, out) -> np.ndarray:
    """norm_bound's first buffer by a plain loop: bound 2 x and exclusion 4 x the median raw norm,
    each kept row clipped then times its staleness weight; rows in `out` dropped; the mean
    weighted by the claims of the rows kept."""
    norms = [float(np.sqrt(sum(v * v for v in f))) for f in flats]
    median = float(np.median(norms))
    total, weight = np.zeros_like(flats[0]), 0.0
    for i, (f, w, s, n) in enumerate(zip(flats, weights, factors, norms)):
        if i in out or n > 4 * median:
            continue
        total = total + w * s * min(1.0, 2 * median / n) * f
        weight += w
    return total / weight


def _open_buffer(model, tmp_path, metrics=None):
    """An async coordinator (norm_bound, the split on, K = 10) with its first buffer open on v0
    and a task at each of ten devices d0-d9, on a store in tmp_path. Returns (fleet, devices)."""
    tmp_path.mkdir(parents=True)
    fleet = make_fleet(model, tmp_path, store=RoundStore(tmp_path / "state.db"), metrics=metrics, mode="async",
                       aggregator="norm_bound", robust=SIGN, async_=AsyncConfig(concurrency=K, buffer_size=K))
    devs = [ManualDevice(fleet, f"d{i}", 10) for i in range(K)]
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.coordinator.tick()
    fleet.drain()
    return fleet, devs


def _script(model, tmp_path, restart_after: int | None = None, metrics=None):
    """One buffer of K updates on v0; with `restart_after`, a new coordinator on the same store
    after that many updates. Returns (coordinator, params before, params after, deltas)."""
    fleet, devs = _open_buffer(model, tmp_path, metrics)
    c = fleet.coordinator
    before = copy_params(c.state.params)
    deltas = _deltas(c.shapes, 21)
    for i, (dev, delta) in enumerate(zip(devs, deltas)):
        if i == restart_after:
            fleet.restart(store=RoundStore(tmp_path / "state.db"))
            fleet.drain()
        dev.send(encode_message(dev.update(delta, update_id=f"u{i}")))
        fleet.drain()
        assert dev.acks()[-1] == (True, ""), dev.acks()
    c = fleet.coordinator
    assert c.state.version == 1
    return c, before, copy_params(c.state.params), deltas


def test_a_flush_leaves_out_the_flipped_and_steps_by_the_mean_of_the_rest(model, tmp_path, caplog):
    metrics = CoordinatorMetrics()
    with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
        c, before, after, deltas = _script(model, tmp_path / "a", metrics=metrics)
    flats = [_flat(d) for d in deltas]
    want = cold_start_mean(flats, [10.0] * K, [1.0] * K, set(FLIPPED))
    got = _flat(after) - _flat(before)
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)
    # not the mean with the flipped in: the split made the difference
    assert np.abs(cold_start_mean(flats, [10.0] * K, [1.0] * K, set()) - want).max() > 100 * 2e-7
    out = [f"d{i}" for i in FLIPPED]
    assert c.left_out.sign_split == {d: 1 for d in out} and not c.left_out.excluded
    assert metrics.registry.get_sample_value("fedge_updates_sign_split_total") == 2
    assert any("the sign split" in r.getMessage() and f"left 2 of {K}" in r.getMessage()
               and ", ".join(out) in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_restart_with_the_buffer_half_full_replays_the_same_split_to_the_same_bits(model, tmp_path):
    ref, _, want, _ = _script(model, tmp_path / "ref")
    got, _, after, _ = _script(model, tmp_path / "restart", restart_after=6)
    assert got is not ref
    for name, value in want.items():
        assert after[name].tobytes() == value.tobytes(), name
    # the process that flushed recorded the split (the first process never flushed)
    assert got.left_out.sign_split == ref.left_out.sign_split == {f"d{i}": 1 for i in FLIPPED}
    assert got.metrics.registry.get_sample_value("fedge_updates_sign_split_total") == 2


def test_round_clip_holds_a_fresh_update_to_the_raw_median_not_the_staleness_weighted_one():
    """round_clip = 1 in a buffer of mostly stale updates: each kept update is clipped to the
    median of the kept updates' clipped raw norms, then weighted by f(s) (clip, then weight, like
    the norm bound). It used to take the median of the staleness-weighted norms, so the stale
    majority shrank the bound and the one fresh update, as large as the others, was cut to 0.45 x."""
    shapes = {"w": (40, 3), "b": (20,)}
    deltas = _deltas(shapes, 5)
    stale = [0] + [15] * (K - 1)  # one fresh update, the rest 15 versions old
    factors = [staleness_weight(s, EXPONENT) for s in stale]
    cfg = RobustConfig(sign=SignSplitConfig(gap=4.0, share=1.0, round_clip=1.0))
    agg = make_aggregator("norm_bound", cfg, RobustState(), np.random.default_rng(0))
    for i, (delta, f) in enumerate(zip(deltas, factors)):
        agg.add(delta, UpdateMeta(f"d{i}", 10.0, stale[i], staleness_weight=f))
    got = _flat(agg.result())
    assert agg.sign_split_ids == [f"d{i}" for i in FLIPPED]
    # oracle: norm_bound's clip (2 x the median raw norm), the flipped out, each kept row clipped
    # to 1 x the median of the kept rows' norms, then weighted by f(s)
    flats = [_flat(d) for d in deltas]
    norms = [float(np.linalg.norm(f)) for f in flats]
    bound = 2 * float(np.median(norms))
    kept = [i for i in range(K) if i not in FLIPPED]
    clipped = {i: flats[i] * min(1.0, bound / norms[i]) for i in kept}
    median = float(np.median([np.linalg.norm(clipped[i]) for i in kept]))
    want = sum(factors[i] * clipped[i] * min(1.0, median / float(np.linalg.norm(clipped[i]))) for i in kept) / len(kept)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
    fresh = float(np.linalg.norm(clipped[0]))
    assert fresh <= 1.05 * median  # the premise: the fresh update is a typical one, (almost) not cut


def test_a_flush_whose_commit_failed_retries_into_the_same_split_and_counts_it_once(model, tmp_path):
    """The store refuses the flush's commit once (a full disk); the next tick flushes the buffer
    again. The retry once drew the sign split's columns again from the advanced RNG: here it left
    out d2, d3, d4 and d7 where the first try and a restarted process leave out d3 and d7, and the
    metric counted 6 for one buffer. Now it commits the bits of the uninterrupted run, counted once."""
    _, _, want, _ = _script(model, tmp_path / "ref")
    metrics = CoordinatorMetrics()
    fleet, devs = _open_buffer(model, tmp_path / "retry", metrics)
    c = fleet.coordinator
    tries = refuse_first_commit(c.store)
    for i, (dev, delta) in enumerate(zip(devs, _deltas(c.shapes, 21))):
        dev.send(encode_message(dev.update(delta, update_id=f"u{i}")))
        if i < K - 1:
            fleet.drain()
    with pytest.raises(OSError, match="no space"):
        fleet.drain()  # the K-th update's flush (the loop logs it and serves the next message)
    assert c.state.version == 0 and c.left_out.sign_split == {}
    c.tick()  # the buffer is full: flushed again
    assert c.state.version == 1 and len(tries) == 2
    for name, value in want.items():
        assert c.state.params[name].tobytes() == value.tobytes(), name
    assert c.left_out.sign_split == {f"d{i}": 1 for i in FLIPPED}
    assert metrics.registry.get_sample_value("fedge_updates_sign_split_total") == 2
