"""The gated sign split (coordinator/robust/sign_split.py) against a plain-loop reference written
here: sign shares counted one coordinate at a time, 2-means with Python lists, the gate and the
majority rule spelled out. The column draw is the one input the two share: the reference takes
the same draw from a twin of the injected generator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.coordinator.robust import BadRobustParameter, RobustError
from fedge.coordinator.robust.sign_split import (
    SignSplitConfig,
    clip_to_median,
    gated_keep,
    sign_features,
    two_means,
)

# --- the reference ------------------------------------------------------------------------------


def ref_columns(seed: int, d: int, share: float) -> list[int]:
    return [int(c) for c in np.random.default_rng(seed).choice(d, size=max(1, int(share * d)), replace=False)]


def ref_features(rows, cols) -> list[list[float]]:
    out = []
    for row in rows:
        pos = zero = neg = 0
        for j in cols:
            if row[j] > 0:
                pos += 1
            elif row[j] < 0:
                neg += 1
            else:
                zero += 1
        out.append([pos / len(cols), zero / len(cols), neg / len(cols)])
    return out


def sq(a, b) -> float:
    return sum((p - q) ** 2 for p, q in zip(a, b))


def ref_two_means(points, iters: int = 20) -> list[int]:
    best, pair = -1.0, (0, 0)
    for i in range(len(points)):  # the first pair farthest apart, in row order
        for j in range(len(points)):
            if sq(points[i], points[j]) > best:
                best, pair = sq(points[i], points[j]), (i, j)
    centres = [list(points[pair[0]]), list(points[pair[1]])]
    labels = None
    for _ in range(iters):
        fresh = [0 if sq(p, centres[0]) <= sq(p, centres[1]) else 1 for p in points]
        if fresh == labels:
            break
        labels = fresh
        for c in (0, 1):
            members = [p for p, label in zip(points, labels) if label == c]
            if members:
                centres[c] = [sum(column) / len(members) for column in zip(*members)]
    return labels


def ref_keep(rows, seed: int, gap: float, share: float, min_inputs: int) -> list[bool]:
    k = len(rows)
    feats = ref_features(rows, ref_columns(seed, len(rows[0]), share))
    if k < min_inputs or all(f == feats[0] for f in feats):
        return [True] * k
    labels = ref_two_means(feats)
    sizes = [labels.count(0), labels.count(1)]
    if 2 * min(sizes) >= k:  # leaving out half or more: keep all
        return [True] * k
    centres = [[sum(col) / sizes[c] for col in zip(*[f for f, lab in zip(feats, labels) if lab == c])]
               for c in (0, 1)]
    spread = math.sqrt(sum(sq(f, centres[lab]) for f, lab in zip(feats, labels)) / k)
    if not math.sqrt(sq(centres[0], centres[1])) > gap * spread:
        return [True] * k
    big = 0 if sizes[0] > sizes[1] else 1
    return [lab == big for lab in labels]


def non_iid_round(rng, d: int, k: int, flipped: int = 0, classes: int = 10, alpha: float = 0.3,
                  topk: float = 1.0) -> np.ndarray:
    """(k, d) synthetic updates: a common direction whose signs are 75% positive, plus a mix of
    class directions drawn from Dirichlet(alpha) (label skew), plus noise; the first `flipped`
    rows negated; with topk < 1 each row keeps only its largest |values|."""
    base = np.abs(rng.normal(1.0, 0.3, d)) * np.where(rng.random(d) < 0.75, 1.0, -1.0)
    dirs = rng.normal(0.0, 1.0, (classes, d))
    rows = np.stack([base + rng.dirichlet(np.full(classes, alpha)) @ dirs + 0.3 * rng.normal(size=d)
                     for _ in range(k)])
    rows[:flipped] *= -1
    if topk < 1:
        for row in rows:
            row[np.argsort(-np.abs(row), kind="stable")[int(topk * d):]] = 0.0
    return rows


# --- the oracle tests ---------------------------------------------------------------------------


def _rounds():
    """(rows, seed, gap, share, min_inputs): dense and sparse, honest-only and with a flipped
    minority, ties from small integers, rounds under min_inputs."""
    for s in range(120):
        rng = np.random.default_rng(s)
        k = int(rng.integers(2, 13))
        kind = s % 4
        if kind == 3:  # small integers: many equal features and equal distances
            rows = rng.integers(-2, 3, size=(k, 40)).astype(float)
        else:
            rows = non_iid_round(rng, 300, k, flipped=int(rng.integers(0, k // 3 + 1)), topk=0.1 if kind == 2 else 1.0)
        yield rows, 1000 + s, float(rng.choice([1.0, 2.0, 4.0])), float(rng.choice([0.1, 0.5, 1.0])), 4


def test_features_and_two_means_match_the_loops():
    for rows, seed, _, share, _ in _rounds():
        feats = sign_features(rows, np.random.default_rng(seed), share)
        want = ref_features(rows, ref_columns(seed, rows.shape[1], share))
        np.testing.assert_array_equal(feats, np.array(want))
        if len(rows) >= 2:
            assert two_means(feats).tolist() == ref_two_means(want)


def test_gated_keep_matches_the_loops():
    split = kept_all = 0
    for rows, seed, gap, share, min_inputs in _rounds():
        got = gated_keep(rows, np.random.default_rng(seed), gap, share, min_inputs)
        assert got.tolist() == ref_keep(rows.tolist(), seed, gap, share, min_inputs)
        split += not got.all()
        kept_all += got.all()
    assert split >= 20 and kept_all >= 20  # the premise: both outcomes were checked


def test_two_flipped_of_ten_go_and_most_honest_rounds_stay_whole():
    """Over 100 synthetic rounds of 10: with 2 sign-flipped, exactly those 2 go in every one;
    honest-only, the gate keeps most rounds whole (it splits about a quarter of them: its 4 x
    is near the 75th percentile of the ratio 2-means finds in noise) and never leaves out half.
    The always-split rule (SignGuard's) would split all 100."""
    honest_split = 0
    for s in range(100):
        honest = non_iid_round(np.random.default_rng(s), 2000, 10)
        attacked = non_iid_round(np.random.default_rng(s), 2000, 10, flipped=2)
        assert gated_keep(attacked, np.random.default_rng(s), 4.0).tolist() == [False] * 2 + [True] * 8
        keep = gated_keep(honest, np.random.default_rng(s), 4.0)
        assert keep.sum() > 5
        honest_split += not keep.all()
    assert 0 < honest_split <= 35, honest_split


# --- the cases that keep every update -----------------------------------------------------------


def test_identical_and_all_zero_rows_keep_all():
    row = np.random.default_rng(0).normal(size=50)
    assert gated_keep(np.tile(row, (8, 1)), np.random.default_rng(0), 4.0, 1.0).all()
    assert gated_keep(np.zeros((8, 50)), np.random.default_rng(0), 4.0, 1.0).all()


def test_fewer_than_min_inputs_keep_all():
    rows = non_iid_round(np.random.default_rng(1), 500, 3, flipped=1)
    assert gated_keep(rows, np.random.default_rng(0), 4.0, 1.0, min_inputs=4).all()
    # the premise: with min_inputs 3 the flipped one goes
    assert gated_keep(rows, np.random.default_rng(0), 4.0, 1.0, min_inputs=3).tolist() == [False, True, True]


def test_a_split_of_half_or_more_keeps_all():
    rows = non_iid_round(np.random.default_rng(2), 500, 10, flipped=5)
    assert gated_keep(rows, np.random.default_rng(0), 4.0, 1.0).all()
    rows = non_iid_round(np.random.default_rng(2), 500, 10, flipped=4)  # a minority: it goes
    assert gated_keep(rows, np.random.default_rng(0), 4.0, 1.0).tolist() == [False] * 4 + [True] * 6


def test_zero_rows_among_updates_are_a_minority_like_any_other():
    """A device that sends all zeros has features (0, 1, 0): two of ten are far from the rest and
    go, the eight trained updates stay; one all-zero row of three (under min_inputs) stays."""
    rows = non_iid_round(np.random.default_rng(3), 500, 10)
    rows[[4, 7]] = 0.0
    assert np.flatnonzero(~gated_keep(rows, np.random.default_rng(0), 4.0, 1.0)).tolist() == [4, 7]


def test_sparse_rows_split_on_their_few_signs():
    honest = non_iid_round(np.random.default_rng(4), 5000, 10, topk=0.1)
    attacked = non_iid_round(np.random.default_rng(4), 5000, 10, flipped=2, topk=0.1)
    assert (honest != 0).mean() == pytest.approx(0.1)  # the premise: zeros dominate
    assert gated_keep(honest, np.random.default_rng(0), 4.0).all()
    assert gated_keep(attacked, np.random.default_rng(0), 4.0).tolist() == [False] * 2 + [True] * 8


def test_bad_rows_and_gap_are_named_errors():
    with pytest.raises(RobustError):
        gated_keep(np.full((5, 4), np.nan), np.random.default_rng(0), 4.0)
    with pytest.raises(RobustError):
        gated_keep(np.zeros((0, 4)), np.random.default_rng(0), 4.0)
    for gap in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(BadRobustParameter):
            gated_keep(np.ones((5, 4)), np.random.default_rng(0), gap)


def test_clip_to_median_against_a_loop():
    rows = np.random.default_rng(6).normal(size=(7, 20)) * np.arange(1, 8)[:, None]
    median = sorted(math.sqrt(sum(v * v for v in r)) for r in rows.tolist())[3]
    for c in (1.0, 1.5):
        want = [[v * min(1.0, c * median / math.sqrt(sum(u * u for u in r))) for v in r] for r in rows.tolist()]
        np.testing.assert_allclose(clip_to_median(rows, c), want, rtol=1e-12)
    zeros = np.zeros((5, 3))
    zeros[0] = 1.0  # the median norm is 0: nothing is clipped (not everything to 0)
    np.testing.assert_array_equal(clip_to_median(zeros, 1.0), zeros)


# --- the config ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict(gap=-1.0), dict(gap=math.inf), dict(gap=math.nan), dict(gap="4"),
                                 dict(share=0.0), dict(share=1.5), dict(share=math.nan), dict(min_inputs=2),
                                 dict(min_inputs=10**7), dict(min_inputs=True), dict(min_inputs=4.0),
                                 dict(round_clip=0.5), dict(round_clip=-1.0), dict(round_clip=math.inf),
                                 dict(round_clip=math.nan)])
def test_sign_config_refuses_bad_values(bad):
    with pytest.raises(BadRobustParameter):
        SignSplitConfig(**bad)


def test_sign_config_defaults_are_off():
    cfg = SignSplitConfig()
    assert not cfg.enabled and cfg.round_clip == 0 and cfg.min_inputs == 4 and cfg.share == 0.1
    assert SignSplitConfig(gap=4.0, share=1.0, min_inputs=3, round_clip=1.0).enabled
