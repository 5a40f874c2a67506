"""The gated sign split: leave out the smaller of two clusters of the round's updates, told apart
by the signs of their coordinates, when the two are far apart (norm_bound's `[robust.sign]`).

    S           a random `share` of the d coordinates, drawn once a round (injected RNG)
    f_i       = (share of x_i[S] > 0, share == 0, share < 0)            sign_features
    labels    = 2-means of the f_i                                       two_means
    c_0, c_1    the two clusters' centres;  spread = sqrt(mean_i ||f_i - c_label(i)||^2)
    leave out the smaller cluster iff ||c_0 - c_1|| > gap x spread,      gated_keep
              k >= min_inputs, and it holds under half of the k updates

SignGuard's sign statistics (Xu, Huang, Song, Lan, ICDCS 2022) with 2-means in place of its
Mean-Shift, and the gate in place of always dropping the smaller cluster. Why the gate: on
label-skewed data 2-means always finds two clusters, and dropping the smaller one every round
left out 353 of 1,000 honest updates on the 50-device Dirichlet 0.1 bench; gated at 4 x,
25 (benchmarks/results/2026-12-06-robust-research/, `nb_signguard_gap4_nc`). A sign-flipped
update has the honest ones' + and - shares swapped, crafted ones (IPM, min-max, min-sum)
shifted, so their cluster sits far from the honest one relative to the honest spread.

2-means starts at the two feature points farthest apart (the first such pair in row order;
deterministic, no draw), assigns each point to the nearer centre (a tie to the first pair
member's), moves each centre to its points' mean (an emptied cluster keeps its centre) and
stops when no label changes, or after `iters` passes. The kept cluster is the larger. Kept
whole: fewer than `min_inputs` updates; all features equal (identical rows, all-zero rows,
rows whose sampled coordinates are all 0 in every row); a split whose smaller part is half of
the round or more (a minority must never outvote the majority); and an ungated split.

Sparse (top-k) updates: the zero share is a feature like the other two, as in SignGuard. A
coordinate that is 0 in every row adds the same to every row's features, so it moves no point
relative to another; rows whose zeros dominate differ in their few nonzero signs, at a smaller
scale but measured against a spread on the same scale (the gate is a ratio).

Cost: the round's k rows, already held by the aggregator that calls it (O(k x model): with the
split off, norm_bound streams in O(model)); O(k x share x d) to take the features, O(k^2) for
the first pair and O(iters x k) for 2-means on 3-vectors. Pure numpy; the RNG is injected (the
aggregator's is drawn from (seed, round): a restarted round replays into the same split).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..limits import MAX_FLEET
from ._inputs import as_matrix
from .clipping import clip_scale
from .errors import BadRobustParameter

# The fewest updates a round needs before the split may leave any out. With 3, 2-means leaves
# one point alone and measures the spread on the other two: on rounds of pure noise (1-D
# Gaussian features, 2,000 rounds each) the gate at 4 x split 93% of 3-update rounds, 51% of
# 4-update ones, 45-71% at 5-7 and 26% at 10 (README, Robust aggregation).
MIN_INPUTS = 4


@dataclass(frozen=True)
class SignSplitConfig:
    gap: float = 0.0  # > 0: leave out the smaller cluster when the centres are over gap x spread apart; 0 = off
    share: float = 0.1  # fraction of the coordinates whose signs are counted, drawn anew each round
    min_inputs: int = MIN_INPUTS  # rounds with fewer updates (after the exclusion bound) keep every one
    round_clip: float = 0.0  # c >= 1: clip each kept update to c x the kept updates' median norm; 0 = off

    def __post_init__(self) -> None:
        if not (isinstance(self.gap, (int, float)) and math.isfinite(self.gap) and self.gap >= 0):
            raise BadRobustParameter(f"sign: gap must be a finite number >= 0 (0 = off), got {self.gap!r}")
        if not (isinstance(self.share, (int, float)) and 0 < self.share <= 1):
            raise BadRobustParameter(f"sign: share must be in (0, 1], got {self.share!r}")
        if (isinstance(self.min_inputs, bool) or not isinstance(self.min_inputs, int)
                or not 3 <= self.min_inputs <= MAX_FLEET):
            raise BadRobustParameter(f"sign: min_inputs must be an integer in [3, {MAX_FLEET:,}] (below 3 no "
                                     f"split leaves out under half), got {self.min_inputs!r}")
        if not (isinstance(self.round_clip, (int, float)) and math.isfinite(self.round_clip)
                and (self.round_clip == 0 or self.round_clip >= 1)):
            raise BadRobustParameter(f"sign: round_clip must be 0 (off) or a finite number >= 1, "
                                     f"got {self.round_clip!r}")

    @property
    def enabled(self) -> bool:
        return self.gap > 0


def sign_features(rows, rng: np.random.Generator, share: float) -> np.ndarray:
    """(k, 3): each row's share of +, 0 and - values over max(1, int(share x d)) coordinates
    drawn without replacement (one draw from `rng`, the same columns for every row)."""
    x = as_matrix(rows)
    d = x.shape[1]
    cols = rng.choice(d, size=max(1, int(share * d)), replace=False)
    s = np.sign(x[:, cols])
    return np.stack([(s > 0).mean(1), (s == 0).mean(1), (s < 0).mean(1)], axis=1)


def two_means(feats, iters: int = 20) -> np.ndarray:
    """(k,) labels 0/1 from Lloyd's 2-means on the (k, m) points, started at the first pair of
    points farthest apart (label 0: the first of the pair)."""
    f = np.asarray(feats, np.float64)
    d2 = ((f[:, None, :] - f[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmax(d2), d2.shape)
    centres = f[[i, j]].copy()
    labels = None
    for _ in range(iters):
        fresh = ((f[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        if labels is not None and np.array_equal(fresh, labels):
            break  # the centres would not move again
        labels = fresh
        for c in (0, 1):
            if (labels == c).any():
                centres[c] = f[labels == c].mean(0)
    return labels if labels is not None else np.zeros(len(f), int)


def separated(feats, labels, gap: float) -> bool:
    """The two clusters' centres are over `gap` x the points' RMS distance to their own centre
    apart (an empty cluster's centre: the mean of all points)."""
    f = np.asarray(feats, np.float64)
    centres = np.stack([f[labels == c].mean(0) if (labels == c).any() else f.mean(0) for c in (0, 1)])
    spread = math.sqrt(float(((f - centres[labels]) ** 2).sum(1).mean()))
    return bool(np.linalg.norm(centres[0] - centres[1]) > gap * spread)


def gated_keep(rows, rng: np.random.Generator, gap: float, share: float = 0.1,
               min_inputs: int = MIN_INPUTS) -> np.ndarray:
    """(k,) bool: the updates the gated split keeps (all of them unless it leaves a minority out)."""
    if not (math.isfinite(gap) and gap > 0):
        raise BadRobustParameter(f"sign split: gap must be finite and > 0, got {gap}")
    feats = sign_features(rows, rng, share)  # drawn whatever k is: the round's RNG stream stays one shape
    k = len(feats)
    keep = np.ones(k, bool)
    if k < min_inputs or np.ptp(feats, axis=0).max() == 0:
        return keep
    labels = two_means(feats)
    sizes = np.bincount(labels, minlength=2)
    if 2 * sizes.min() >= k or not separated(feats, labels, gap):
        return keep
    return labels == sizes.argmax()


def clip_to_median(rows, multiple: float) -> np.ndarray:
    """The (k, d) rows, each clipped to `multiple` x the median of their L2 norms."""
    x = as_matrix(rows)
    norms = np.linalg.norm(x, axis=1)
    bound = multiple * float(np.median(norms))
    return x * clip_scale(norms, bound if bound > 0 else math.inf)[:, None]
