"""Robust rules against plain loops of the papers' formulas, plus their edge cases."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from fedge.coordinator.robust import (
    BadRobustParameter,
    ClippedMean,
    NormBoundConfig,
    NormHistory,
    RobustError,
    TooManyByzantine,
    bucket_means,
    bucketing,
    centered_clipping,
    coordinate_median,
    flatten,
    krum_scores,
    multi_krum,
    multi_krum_select,
    trimmed_mean,
    unflatten,
)
from fedge.coordinator.robust.norm_bound import claim_allowance

# --- oracles: one coordinate / one vector at a time, as the papers write them ---------------


def median_loop(x):
    out = []
    for j in range(len(x[0])):
        col = sorted(float(r[j]) for r in x)
        k = len(col)
        out.append(col[k // 2] if k % 2 else (col[k // 2 - 1] + col[k // 2]) / 2)
    return np.array(out)


def trimmed_loop(x, beta):
    k = len(x)
    b = int(beta * k)
    out = []
    for j in range(len(x[0])):
        col = sorted(float(r[j]) for r in x)
        kept = col[b : k - b]
        out.append(sum(kept) / len(kept))
    return np.array(out)


def sqdist(a, b):
    return sum((float(p) - float(q)) ** 2 for p, q in zip(a, b))


def krum_loop(x, f, m):
    n = len(x)
    scores = []
    for i in range(n):
        d = sorted(sqdist(x[i], x[j]) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    order = sorted(range(n), key=lambda i: (scores[i], i))[:m]
    return scores, order, np.mean([x[i] for i in order], axis=0)


def cc_loop(x, tau, iters, v0):
    v = [float(t) for t in v0]
    for _ in range(iters):
        step = [0.0] * len(v)
        for row in x:
            diff = [float(a) - b for a, b in zip(row, v)]
            norm = math.sqrt(sum(t * t for t in diff))
            s = 1.0 if norm == 0 else min(1.0, tau / norm)
            step = [a + s * t / len(x) for a, t in zip(step, diff)]
        v = [a + b for a, b in zip(v, step)]
    return np.array(v)


def rows(seed, k, d, scale=1.0):
    return np.random.default_rng(seed).normal(size=(k, d)) * scale


# --- coordinate-wise ---------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_median_matches_loop(k):
    for seed in range(5):
        x = rows(seed, k, 7)
        np.testing.assert_allclose(coordinate_median(x), median_loop(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k,beta", [(1, 0.0), (1, 0.4), (4, 0.25), (5, 0.2), (10, 0.1), (10, 0.49), (7, 0.3)])
def test_trimmed_mean_matches_loop(k, beta):
    for seed in range(5):
        x = rows(seed, k, 6)
        np.testing.assert_allclose(trimmed_mean(x, beta), trimmed_loop(x, beta), rtol=0, atol=1e-12)


def test_coordinate_rules_with_ties_and_all_equal():
    tied = np.array([[1.0, 2.0], [1.0, 2.0], [5.0, -3.0], [1.0, 9.0]])
    np.testing.assert_array_equal(coordinate_median(tied), median_loop(tied))
    np.testing.assert_array_equal(trimmed_mean(tied, 0.25), trimmed_loop(tied, 0.25))
    same = np.tile([0.5, -2.0, 3.0], (6, 1))
    np.testing.assert_array_equal(coordinate_median(same), same[0])
    np.testing.assert_allclose(trimmed_mean(same, 0.3), same[0])


def test_trimmed_mean_drops_a_minority_of_outliers():
    x = np.vstack([np.ones((8, 3)), np.full((2, 3), 1e9)])
    np.testing.assert_allclose(trimmed_mean(x, 0.2), np.ones(3))
    assert trimmed_mean(x, 0.1)[0] > 1e7  # beta below the outlier share lets one through


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7])
def test_trimmed_mean_refuses_beta_out_of_range(beta):
    with pytest.raises(BadRobustParameter):
        trimmed_mean(rows(0, 4, 2), beta)


@pytest.mark.parametrize("bad", [np.zeros((0, 3)), np.zeros(3), np.array([[1.0, np.nan]]), np.array([[np.inf, 0.0]])])
def test_rules_refuse_bad_input(bad):
    for rule in (coordinate_median, lambda x: trimmed_mean(x, 0.1), lambda x: centered_clipping(x, 1.0)):
        with pytest.raises(RobustError):
            rule(bad)


# --- multi-Krum --------------------------------------------------------------------------------


@pytest.mark.parametrize("n,f,m", [(3, 0, 1), (5, 1, 1), (7, 2, 3), (10, 3, 7), (11, 4, 2)])
def test_multi_krum_matches_loop(n, f, m):
    for seed in range(4):
        x = rows(seed, n, 5)
        scores, order, mean = krum_loop(x, f, m)
        np.testing.assert_allclose(krum_scores(x, f), scores, rtol=1e-10, atol=1e-10)
        assert list(multi_krum_select(x, f, m)) == order
        np.testing.assert_allclose(multi_krum(x, f, m), mean, rtol=1e-10, atol=1e-12)


def test_multi_krum_default_m_is_n_minus_f_and_excludes_outliers():
    honest = rows(1, 8, 4, scale=0.1)
    x = np.vstack([honest, np.full((2, 4), 50.0), np.full((1, 4), -80.0)])
    sel = multi_krum_select(x, 3)
    assert len(sel) == 11 - 3 and set(sel) == set(range(8))
    np.testing.assert_allclose(multi_krum(x, 3), honest.mean(axis=0), atol=1e-12)


def test_multi_krum_ties_and_all_equal():
    same = np.tile([1.0, 2.0], (5, 1))
    assert list(multi_krum_select(same, 1, 2)) == [0, 1]  # equal scores: arrival order
    np.testing.assert_array_equal(multi_krum(same, 1, 2), same[0])
    # Two exact pairs tie in score; the earlier pair wins.
    x = np.array([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0], [3.0, 0.0], [10.0, 10.0]])
    scores, order, _ = krum_loop(x, 1, 2)
    assert list(multi_krum_select(x, 1, 2)) == order == [0, 1]


@pytest.mark.parametrize("n,f", [(1, 0), (2, 0), (4, 1), (6, 2), (7, 3)])
def test_krum_refuses_too_many_byzantine(n, f):
    with pytest.raises(TooManyByzantine, match="2f \\+ 2 < n"):
        multi_krum(rows(0, n, 3), f)


def test_multi_krum_refuses_bad_m_and_f():
    with pytest.raises(BadRobustParameter):
        multi_krum(rows(0, 7, 3), 2, m=6)
    with pytest.raises(BadRobustParameter):
        multi_krum(rows(0, 7, 3), 2, m=0)
    with pytest.raises(BadRobustParameter):
        multi_krum(rows(0, 7, 3), -1)


# --- centered clipping -------------------------------------------------------------------------


@pytest.mark.parametrize("k,tau,iters", [(1, 0.5, 1), (4, 0.3, 1), (6, 1.0, 3), (9, 10.0, 2), (5, 0.01, 5)])
def test_centered_clipping_matches_loop(k, tau, iters):
    for seed in range(4):
        x = rows(seed, k, 5)
        v0 = rows(seed + 100, 1, 5)[0] * 0.2
        np.testing.assert_allclose(centered_clipping(x, tau, iters, v0), cc_loop(x, tau, iters, v0), atol=1e-12)
    np.testing.assert_allclose(centered_clipping(x, tau, iters), cc_loop(x, tau, iters, np.zeros(5)), atol=1e-12)


def test_centered_clipping_large_tau_is_the_mean_and_bounds_a_single_outlier():
    x = rows(3, 6, 4)
    np.testing.assert_allclose(centered_clipping(x, 1e9, 1), x.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(centered_clipping(x, np.inf, 2, center=x[0]), x.mean(axis=0), atol=1e-12)
    honest = np.zeros((9, 4))
    bad = np.vstack([honest, np.full((1, 4), 1e6)])
    moved = np.linalg.norm(centered_clipping(bad, 0.5, 3))
    assert moved <= 3 * 0.5 / 10 + 1e-12  # each iteration moves the center by at most tau / n


def test_centered_clipping_all_at_center_and_bad_params():
    x = np.tile([2.0, -1.0], (4, 1))
    np.testing.assert_array_equal(centered_clipping(x, 0.1, 2, center=x[0]), x[0])  # norm 0: no step
    for tau in (0.0, -1.0, np.nan):
        with pytest.raises(BadRobustParameter):
            centered_clipping(x, tau)
    with pytest.raises(BadRobustParameter):
        centered_clipping(x, 1.0, iterations=0)
    with pytest.raises(RobustError):
        centered_clipping(x, 1.0, center=np.zeros(3))


# --- bucketing ---------------------------------------------------------------------------------


def test_bucket_means_match_the_papers_loop():
    for n, s in [(1, 1), (5, 2), (9, 3), (10, 4), (6, 10)]:
        x = rows(n, n, 3)
        perm = np.random.default_rng(7).permutation(n)
        expect = []
        for i in range(math.ceil(n / s)):
            members = [x[perm[t]] for t in range(i * s, min(n, (i + 1) * s))]
            expect.append(sum(members) / len(members))
        got = bucket_means(x, s, np.random.default_rng(7))
        np.testing.assert_allclose(got, np.array(expect), atol=1e-12)


def test_bucketing_wraps_any_rule_and_is_reproducible_from_the_rng():
    x = rows(2, 12, 4)
    a = bucketing(x, 3, coordinate_median, np.random.default_rng(5))
    b = bucketing(x, 3, coordinate_median, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, median_loop(bucket_means(x, 3, np.random.default_rng(5))))
    # s = 1 keeps every update (permuted); a single bucket is the plain mean.
    np.testing.assert_allclose(bucketing(x, 1, coordinate_median, np.random.default_rng(0)), median_loop(x))
    np.testing.assert_allclose(bucketing(x, 12, lambda y: y[0], np.random.default_rng(0)), x.mean(axis=0))
    krum_of_buckets = bucketing(x, 2, lambda y: multi_krum(y, 1), np.random.default_rng(1))
    assert krum_of_buckets.shape == (4,)
    with pytest.raises(BadRobustParameter):
        bucket_means(x, 0, np.random.default_rng(0))
    with pytest.raises(TooManyByzantine):  # 6 buckets cannot hold f = 2 for Krum
        bucketing(x, 2, lambda y: multi_krum(y, 3), np.random.default_rng(1))


# --- norm bound (the default defence) ------------------------------------------------------------


def test_clipped_mean_matches_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, 6)) * rng.uniform(0.1, 5.0, size=(9, 1))
    w = rng.uniform(1, 50, size=9)
    bound = 2.0
    acc = ClippedMean(bound)
    for row, wi in zip(x, w):
        acc.add(row, wi)
    num, den = np.zeros(6), 0.0
    for row, wi in zip(x, w):
        norm = math.sqrt(sum(t * t for t in row))
        num += row * min(1.0, bound / norm) * wi
        den += wi
    np.testing.assert_allclose(acc.result(), num / den, atol=1e-12)
    assert acc.clipped == sum(np.linalg.norm(r) > bound for r in x)
    np.testing.assert_allclose(acc.norms, np.linalg.norm(x, axis=1))


def test_norm_history_bound_is_a_running_median_of_earlier_rounds():
    cfg = NormBoundConfig(multiplier=2.0, window=5, min_history=3, initial_bound=7.0)
    h = NormHistory()
    assert h.bound(cfg) == 7.0
    h = h.record([1.0, 2.0], cfg)
    assert h.bound(cfg) == 7.0  # two norms < min_history
    h = h.record([3.0, float("nan"), 100.0], cfg)
    assert h.norms == (1.0, 2.0, 3.0, 100.0)  # the NaN is not a norm
    assert h.bound(cfg) == 2.0 * 2.5
    h = h.record([4.0, 5.0, 6.0], cfg)
    assert h.norms == (3.0, 100.0, 4.0, 5.0, 6.0)  # the window keeps the last 5
    assert h.bound(cfg) == 2.0 * 5.0
    assert NormHistory().bound(NormBoundConfig()) == math.inf  # no initial bound: first rounds unclipped


def test_norm_bound_cuts_a_huge_update():
    cfg = NormBoundConfig(multiplier=2.0, min_history=3)
    h = NormHistory().record([1.0] * 10, cfg)
    acc = ClippedMean(h.bound(cfg))
    for _ in range(4):
        acc.add(np.array([1.0, 0.0]), 10.0)
    assert acc.add(np.array([0.0, -1e6]), 10.0) == 1e6  # model replacement: scaled far up
    np.testing.assert_allclose(acc.result(), (np.array([40.0, 0.0]) + np.array([0.0, -2.0]) * 10.0) / 50.0)
    assert acc.clipped == 1


def test_an_update_far_over_the_median_is_left_out_not_clipped_in():
    """exclude_above: a plain loop that skips such updates; when every update is over it (a
    stale bound), the round falls back to clipping them all."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 5))
    x[2] *= 400.0  # the poisoner's kind of update
    acc = ClippedMean(2.0, exclude_above=30.0)
    for row in x:
        acc.add(row, 1.0)
    kept = [row * min(1.0, 2.0 / np.linalg.norm(row)) for row in x if np.linalg.norm(row) <= 30.0]
    np.testing.assert_allclose(acc.result(), np.mean(kept, axis=0), atol=1e-12)
    assert acc.excluded_count == 1 and len(acc.norms) == 7  # its norm still reaches the history
    stale = ClippedMean(0.1, exclude_above=0.2)
    for row in x[:3]:
        stale.add(row, 2.0)
    clipped = [row * 0.1 / np.linalg.norm(row) for row in x[:3]]
    np.testing.assert_allclose(stale.result(), np.mean(clipped, axis=0), atol=1e-12)
    with pytest.raises(BadRobustParameter):
        ClippedMean(2.0, exclude_above=1.0)
    with pytest.raises(BadRobustParameter):
        NormBoundConfig(multiplier=2.0, exclude_multiplier=1.5)
    assert NormHistory().record([1.0] * 9, NormBoundConfig()).exclusion(NormBoundConfig()) == 4.0
    assert NormHistory().exclusion(NormBoundConfig()) == math.inf
    assert NormHistory().record([1.0] * 9, NormBoundConfig()).exclusion(NormBoundConfig(exclude_multiplier=0)) \
        == math.inf


def test_clipped_mean_memory_is_O_model():
    d = 50_000
    acc = ClippedMean(1.0)
    rng = np.random.default_rng(0)
    acc.add(rng.normal(size=d))
    tracemalloc.start()
    for _ in range(40):
        acc.add(rng.normal(size=d))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 6 * d * 8  # a few (d,) temporaries; keeping 40 updates would be 40 x d x 8


def test_norm_bound_refuses_bad_config_and_input():
    for bad in (dict(multiplier=0), dict(window=0), dict(min_history=0), dict(min_history=300), dict(initial_bound=-1),
                dict(exclude_claim_allowance=0.5), dict(exclude_claim_allowance=math.inf),
                dict(exclude_claim_allowance=math.nan)):
        with pytest.raises(BadRobustParameter):
            NormBoundConfig(**bad)
    acc = ClippedMean(1.0)
    with pytest.raises(RobustError):
        acc.add(np.array([np.nan]))
    with pytest.raises(RobustError):
        acc.add(np.array([1.0]), weight=0.0)
    with pytest.raises(RobustError):
        acc.result()
    acc.add(np.ones(3))
    with pytest.raises(RobustError):
        acc.add(np.ones(4))


def test_flatten_round_trip():
    p = {"b": np.arange(6, dtype=np.float32).reshape(2, 3), "a": np.array([7.0], np.float32)}
    v = flatten(p)
    np.testing.assert_array_equal(v, [7, 0, 1, 2, 3, 4, 5])
    back = unflatten(v, p)
    assert all(back[k].dtype == p[k].dtype and np.array_equal(back[k], p[k]) for k in p)
    with pytest.raises(RobustError):
        unflatten(np.zeros(8), p)


def test_the_claim_allowance_is_the_claim_over_the_median_between_1_and_its_cap():
    cfg = NormBoundConfig(exclude_claim_allowance=2.5)
    assert [claim_allowance(cfg, c, 100.0) for c in (1.0, 100.0, 180.0, 250.0, 2.0**32)] == [1.0, 1.0, 1.8, 2.5, 2.5]
    assert claim_allowance(cfg, 500.0, None) == claim_allowance(cfg, 500.0, 0.0) == 1.0  # nothing to compare with
    assert claim_allowance(cfg, math.nan, 100.0) == claim_allowance(cfg, math.inf, 100.0) == 1.0  # never widened
    assert claim_allowance(NormBoundConfig(exclude_claim_allowance=1.0), 500.0, 100.0) == 1.0
    acc = ClippedMean(1.0, exclude_above=4.0)  # a norm-6 update is left out, unless its claim allows 1.5x
    acc.add(np.array([6.0, 0.0]), 1.0, allowance=1.5)
    acc.add(np.array([0.0, 6.0]), 1.0)
    assert acc.left_out == [False, True] and acc.excluded_count == 1
    np.testing.assert_allclose(acc.result(), [1.0, 0.0])


def test_krum_scores_of_identical_updates_are_zero_not_rounded_below_it():
    """||a - b||^2 as |a|^2 + |b|^2 - 2ab rounds to +-1e-11 for identical rows of norm ~170 (it
    went below zero for some of these seeds); a squared distance is never negative, and the
    exact one here is 0, so every score is 0 up to that rounding and none below 0."""
    for seed in range(20):
        v = np.random.default_rng(seed).normal(size=300) * 10
        scores = krum_scores(np.stack([v] * 5), f=1)
        assert (scores >= 0).all() and scores.max() < 1e-6, (seed, scores)


def test_centered_clipping_with_tau_inf_lands_on_the_mean_even_where_a_norm_overflows():
    """tau = inf clips nothing (the docstring: one step lands on the mean). Entries of 1e200 are
    finite but their squared norm is not: the scale must stay 1 there, not inf / inf = NaN."""
    x = np.array([[1e200, 1e200], [-1e200, 3e200]])
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is the point
        assert np.isinf(np.linalg.norm(x, axis=1)).all()
        assert centered_clipping(x, math.inf).tolist() == [0.0, 2e200]  # oracle: the mean, by hand


def test_the_norm_history_has_a_median_from_exactly_min_history_norms():
    """'None before min_history values': with exactly min_history norms the median is theirs."""
    cfg = NormBoundConfig(min_history=3, window=10, multiplier=2.0)
    assert NormHistory((1.0, 9.0)).median(cfg) is None and NormHistory((1.0, 9.0)).bound(cfg) == math.inf
    assert NormHistory((1.0, 2.0, 9.0)).median(cfg) == 2.0 and NormHistory((1.0, 2.0, 9.0)).bound(cfg) == 4.0
