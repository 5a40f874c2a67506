"""Probe: data-free robust rules behind the default's norm bound, on `fedge bench robustness`.

Not shipped. Each rule runs after the default's own clip, weight cap and exclusion (the same
limits ScreenedAggregator takes: the history's, or the round's own medians in the first rounds),
on the k' rows the exclusion kept, and returns the round's aggregate. The aggregator exposes
the history's bound as task_clip, so the device clip applies as for norm_bound.

    nb_dnc      DnC (Shejwalkar & Houmansadr, NDSS 2021, Alg. 2): `iters` times, b random
                coordinates, centre, top right-singular vector v, score (<x_i - mu, v>)^2, keep
                the k' - c f lowest; the kept set is the intersection; weighted mean of it
    nb_dnc_c2   the same with c = 2 (drop 2f a pass; registered, not run)
    nb_dnc_1    one pass over all coordinates (drop exactly f; registered, not run)
    nb_rfa      RFA (Pillutla, Kakade, Harchaoui 2022): weighted geometric median by smoothed
                Weiszfeld, nu = 1e-6, `iters` steps from the weighted mean
    nb_rfa_b2   the same behind buckets of 2 (Karimireddy, He, Jaggi 2022; registered, not run)
    nb_flame    FLAME without noise (Nguyen et al. 2022): pairwise cosine distances, the
                single-linkage cluster that first reaches a majority (min_cluster_size k'/2 + 1,
                min_samples 1, HDBSCAN's majority cluster), clipped to the median norm, mean
    nb_oracle   not a defence: the default's clip with the attackers' updates left out (the
                simulator's own choose_attackers for 50 devices, 20%, the run's seed; in the
                clean cell the same devices' honest updates): what perfect filtering could reach
    nb_signguard SignGuard (Xu et al. 2022): norm filter [0.1, 3] x median, then 2-means on the
                sign statistics (share of +, 0, - coordinates) of a random 10% of coordinates,
                keep the larger cluster; intersection; clip to the median norm; mean
    nb_signguard_gap6  the same, but the smaller cluster is left out only when the centres are over
                6 x the points' RMS distance to their own centre apart (6: on synthetic rounds of 10,
                honest-only splits had ratios 2.4-5.7 (5th-95th percentile of 200), rounds with 2
                flipped 10.8-25; not tuned on the bench)
    nb_signguard_gap4  the same at 4 x
    nb_medclip  no filter: every kept update clipped to the round's median norm, SignGuard's last step
    nb_signguard_gap8  the gated split at 8 x (followup/)
    nb_signguard_gapG_nc  G = 4, 6, 8: the gated split without the clip to the round's median norm;
                the rows keep the default's own clip, 2 x the running median (followup/)
    nb_signguard_gap4_c15  the gated split at 4 x, then each kept row clipped to 1.5 x the median of
                the kept rows' norms (gap4 clips to 1 x the median of all rows the exclusion kept;
                gap4_nc to nothing below the default's 2 x running median) (round3/)
    nb_signguard_gap4_c125  the same at 1.25 x (round3/)
    nb_medclip_c15  no filter: every row the exclusion kept clipped to 1.5 x their median norm (round3/)
    nb_signguard_gap4_c15_dup  nb_signguard_gap4_c15 that also leaves out every row whose cosine with
                another row of the round is over 0.99 (the bench's colluders, ALIE, IPM, min-max and
                min-sum, send one vector a round; an adversary that adds noise would not). Honest pairs
                reach 0.991 on seed 0 (one round in each of two runs), so this drops a few honest rows
    nb_signguard_gap4_c15_dup999  the same at 0.999 (round3/)
    nb_signguard_gap3_c15_dup999  the same with the split gated at 3 x (round3/)
    nb_signguard_gap35_c15_dup999  gated at 3.5 x (round3/; chosen after gap 3 and 4 on the screen's cells)

Run (spawned workers import this file as __mp_main__, so the rules register there too):

    .venv-test/bin/python benchmarks/results/2026-12-06-robust-research/probe.py \
        --json out.json --defenses mean,norm_bound,nb_dnc --partitions dirichlet --fractions 0.2 --rounds 100
"""

from __future__ import annotations

import math
import sys

import numpy as np

from fedge.coordinator.aggregate import AGGREGATORS, register_aggregator
from fedge.coordinator.robust.aggregators import EXTRA_KEY, RobustConfig, RobustState, _Base
from fedge.coordinator.robust.clipping import clip_scale
from fedge.coordinator.robust.norm_bound import claim_allowance, round_limits

# ---- the rules: pure numpy, (k, d) rows and (k,) weights in, (d,) out or a keep mask ----

def dnc_keep(x: np.ndarray, f: int, rng: np.random.Generator, iters: int = 5, b: int = 1000,
             c: float = 1.0) -> np.ndarray:
    k, d = x.shape
    drop = int(math.floor(c * f))
    keep = np.ones(k, bool)
    if drop < 1 or k - drop < 1:
        return keep
    for _ in range(iters):
        cols = rng.choice(d, size=min(b, d), replace=False)
        sub = x[:, cols]
        centred = sub - sub.mean(axis=0)
        v = np.linalg.svd(centred, full_matrices=False)[2][0]
        scores = (centred @ v) ** 2
        good = np.zeros(k, bool)
        good[np.argsort(scores, kind="stable")[: k - drop]] = True
        keep &= good
    if not keep.any():
        keep[:] = True
    return keep


def geometric_median(x: np.ndarray, w: np.ndarray, iters: int = 3, nu: float = 1e-6) -> np.ndarray:
    alpha = w / w.sum()
    z = alpha @ x
    for _ in range(iters):
        beta = alpha / np.maximum(nu, np.linalg.norm(x - z, axis=1))
        z = beta @ x / beta.sum()
    return z


def majority_cluster(x: np.ndarray) -> np.ndarray:
    """Single linkage on cosine distance: the first component (raising the threshold edge by
    edge) with at least k // 2 + 1 members."""
    k = x.shape[0]
    need = k // 2 + 1
    if k < 3:
        return np.ones(k, bool)
    n = np.linalg.norm(x, axis=1)
    u = x / np.where(n > 0, n, 1.0)[:, None]
    dist = 1.0 - u @ u.T
    parent = list(range(k))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    edges = sorted((dist[i, j], i, j) for i in range(k) for j in range(i + 1, k))
    for _, i, j in edges:
        a, b = find(i), find(j)
        if a != b:
            parent[a] = b
            members = np.array([find(m) == b for m in range(k)])
            if members.sum() >= need:
                return members
    return np.ones(k, bool)


def kmeans2(feats: np.ndarray, iters: int = 20) -> np.ndarray:
    """Labels 0/1 from 2-means, started at the two points farthest apart (deterministic)."""
    d2 = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(np.argmax(d2), d2.shape)
    cent = feats[[i, j]].copy()
    labels = np.zeros(len(feats), int)
    for _ in range(iters):
        labels = ((feats[:, None, :] - cent[None]) ** 2).sum(-1).argmin(1)
        for c in (0, 1):
            if (labels == c).any():
                cent[c] = feats[labels == c].mean(0)
    return labels


def signguard_keep(x: np.ndarray, rng: np.random.Generator, low: float = 0.1, high: float = 3.0,
                   share: float = 0.1, gap: float = 0.0) -> np.ndarray:
    k, d = x.shape
    norms = np.linalg.norm(x, axis=1)
    med = np.median(norms)
    keep = (norms >= low * med) & (norms <= high * med)
    cols = rng.choice(d, size=max(1, int(share * d)), replace=False)
    s = np.sign(x[:, cols])
    feats = np.stack([(s > 0).mean(1), (s == 0).mean(1), (s < 0).mean(1)], axis=1)
    if k >= 3 and np.ptp(feats, axis=0).max() > 0:
        labels = kmeans2(feats)
        big = np.bincount(labels, minlength=2).argmax()
        if not gap or _separated(feats, labels, gap):
            keep &= labels == big
    if not keep.any():
        keep[:] = True
    return keep


def twin_free(x: np.ndarray, cos: float = 0.99) -> np.ndarray:
    """Keep mask: False for every row with cosine over `cos` to another row (zero rows have none)."""
    n = np.linalg.norm(x, axis=1)
    u = x / np.where(n > 0, n, 1.0)[:, None]
    sim = u @ u.T
    np.fill_diagonal(sim, -1.0)
    return ~(sim > cos).any(axis=1)


def _separated(feats: np.ndarray, labels: np.ndarray, gap: float) -> bool:
    """The two clusters' centres are over `gap` x the points' RMS distance to their own centre apart."""
    centres = np.stack([feats[labels == c].mean(0) if (labels == c).any() else feats.mean(0) for c in (0, 1)])
    spread = np.sqrt(((feats - centres[labels]) ** 2).sum(1).mean())
    return bool(np.linalg.norm(centres[0] - centres[1]) > gap * spread)


def _mean(x, w, keep):
    return w[keep] @ x[keep] / w[keep].sum()


def _clip_to_median(x):
    n = np.linalg.norm(x, axis=1)
    return x * clip_scale(n, float(np.median(n)))[:, None]


def _or_all(keep):
    """keep, or every row if it keeps none."""
    return keep if keep.any() else np.ones_like(keep)


def _kept_mean_clip(x, w, keep, c):
    """(weighted mean of the kept rows, each clipped to c x the kept rows' median norm, keep)."""
    n = np.linalg.norm(x[keep], axis=1)
    return _mean(x[keep] * clip_scale(n, c * float(np.median(n)))[:, None], w[keep], np.ones(len(n), bool)), keep


def _kept_mean(x, w, keep, clip=False):
    """(weighted mean of the kept rows, keep); clip: FLAME's and SignGuard's clip to the median norm first."""
    return _mean(_clip_to_median(x) if clip else x, w, keep), keep


def _bucketed_gm(x, w, rng, s: int = 2):
    order = rng.permutation(len(x))
    groups = [order[i:i + s] for i in range(0, len(x), s)]
    bx = np.stack([w[g] @ x[g] / w[g].sum() for g in groups])
    bw = np.array([w[g].sum() for g in groups])
    return geometric_median(bx, bw)


# Each rule: (rows, weights, rng) -> (aggregate (d,), keep mask (k,): the rows it used).
RULES = {
    "nb_dnc": lambda x, w, rng: _kept_mean(x, w, dnc_keep(x, int(math.floor(0.2 * len(x))), rng)),
    "nb_dnc_c2": lambda x, w, rng: _kept_mean(x, w, dnc_keep(x, int(math.floor(0.2 * len(x))), rng, c=2.0)),
    "nb_dnc_1": lambda x, w, rng: _kept_mean(x, w, dnc_keep(x, int(math.floor(0.2 * len(x))), rng, iters=1,
                                                              b=x.shape[1])),
    "nb_rfa": lambda x, w, rng: (geometric_median(x, w), np.ones(len(x), bool)),
    "nb_rfa_b2": lambda x, w, rng: (_bucketed_gm(x, w, rng), np.ones(len(x), bool)),
    "nb_flame": lambda x, w, rng: _kept_mean(x, w, majority_cluster(x), clip=True),
    "nb_signguard": lambda x, w, rng: _kept_mean(x, w, signguard_keep(x, rng), clip=True),
    "nb_signguard_gap6": lambda x, w, rng: _kept_mean(x, w, signguard_keep(x, rng, gap=6.0), clip=True),
    "nb_signguard_gap4": lambda x, w, rng: _kept_mean(x, w, signguard_keep(x, rng, gap=4.0), clip=True),
    "nb_medclip": lambda x, w, rng: _kept_mean(x, w, np.ones(len(x), bool), clip=True),
    "nb_signguard_gap8": lambda x, w, rng: _kept_mean(x, w, signguard_keep(x, rng, gap=8.0), clip=True),
}
# The gated split without SignGuard's median clip: the rows keep only the default's own clip
# (2 x the running median norm, applied by NormBoundThen before every rule).
for _g in (4, 6, 8):
    RULES[f"nb_signguard_gap{_g}_nc"] = (lambda g: lambda x, w, rng: _kept_mean(
        x, w, signguard_keep(x, rng, gap=float(g))))(_g)
# Between the two: the gated split, then a clip to c x the kept rows' median norm (round3/).
RULES["nb_signguard_gap4_c15"] = lambda x, w, rng: _kept_mean_clip(x, w, signguard_keep(x, rng, gap=4.0), 1.5)
RULES["nb_signguard_gap4_c125"] = lambda x, w, rng: _kept_mean_clip(x, w, signguard_keep(x, rng, gap=4.0), 1.25)
for _gap, _cos, _tag in ((4, 0.99, ""), (4, 0.999, "999"), (3, 0.999, "999"), (3.5, 0.999, "999")):
    _name = f"nb_signguard_gap{str(_gap).replace('.', '')}_c15_dup{_tag}"
    RULES[_name] = (lambda gap, cos: lambda x, w, rng: _kept_mean_clip(
        x, w, _or_all(twin_free(x, cos) & signguard_keep(x, rng, gap=float(gap))), 1.5))(_gap, _cos)
RULES["nb_medclip_c15"] = lambda x, w, rng: _kept_mean_clip(x, w, np.ones(len(x), bool), 1.5)


# ---- the aggregator: the default's clip, cap and exclusion, then a rule ----

class NormBoundThen(_Base):
    def __init__(self, rule, cfg: RobustConfig, state: RobustState, rng: np.random.Generator) -> None:
        super().__init__()
        self.rule, self.rng, self.norm_cfg = rule, rng, cfg.norm
        self.history_bound = state.history.bound(cfg.norm)
        self.history_exclusion = state.history.exclusion(cfg.norm)
        self.history_cap = state.claims.weight_cap(cfg.norm)
        self.history_median_claim = state.claims.median(cfg.norm)
        self.rows: list[np.ndarray] = []
        self.screened_ids: list = []

    @property
    def task_clip(self) -> float:
        return self.history_bound if 0 < self.history_bound < math.inf else math.inf

    def _add(self, vec, weight, factor) -> None:
        self.rows.append(vec)
        self.norms.append(float(np.linalg.norm(vec)))

    def _reduce(self) -> np.ndarray:
        if self.task_clip < math.inf:
            bound, exclusion, cap = self.task_clip, max(self.task_clip, self.history_exclusion), self.history_cap
            median_claim = self.history_median_claim
        else:
            bound, exclusion, cap = round_limits(self.norm_cfg, self.norms, self.claims)
            median_claim = float(np.median(self.claims))
        norms = np.array(self.norms)
        inside = norms <= exclusion * np.array([claim_allowance(self.norm_cfg, c, median_claim) for c in self.claims])
        if not inside.any():
            inside[:] = True
        self._inside = inside
        rows = np.stack(self.rows)[inside] * clip_scale(norms[inside], bound)[:, None]
        weights = np.minimum(np.array(self.claims)[inside], cap)
        self.excluded_ids = [i for i, k in zip(self.ids, inside) if not k]
        vec, keep = self.rule(rows, weights, self.rng)
        candidates = [i for i, k in zip(self.ids, inside) if k]
        self.screened_ids = [i for i, k in zip(candidates, keep) if not k]  # the bench counts them (screened)
        return np.asarray(vec, np.float64)


def _attackers(seed: int) -> frozenset:
    from fedge.tools.simulate.adversary import choose_attackers

    return choose_attackers([f"dev-{i:03d}" for i in range(50)], 0.2, seed)


class OracleDrop(NormBoundThen):
    """NormBoundThen whose rule leaves out the updates of the run's attackers (by device id)."""

    def __init__(self, cfg, state, rng, seed: int) -> None:
        super().__init__(None, cfg, state, rng)
        bad = _attackers(seed)
        self.rule = lambda x, w, _rng: self._drop(x, w, bad)

    def _drop(self, x, w, bad):
        keep = np.array([i not in bad for i, k in zip(self.ids, self._inside) if k])
        if not keep.any():
            keep[:] = True
        return _mean(x, w, keep), keep


def _factory(name):
    def factory(ctx):
        cfg = ctx.settings if isinstance(ctx.settings, RobustConfig) else RobustConfig()
        state = RobustState.from_extra(ctx.extra.get(EXTRA_KEY))
        agg = (OracleDrop(cfg, state, ctx.rng(), ctx.seed) if name == "nb_oracle"
               else NormBoundThen(RULES[name], cfg, state, ctx.rng()))
        agg.cfg, agg.prior = cfg, RobustState.from_extra(ctx.extra.get(EXTRA_KEY))
        return agg
    return factory


for _name in (*RULES, "nb_oracle"):
    if _name not in AGGREGATORS:
        register_aggregator(_name, _factory(_name))


if __name__ == "__main__":
    from fedge.tools.bench.robustness import main

    sys.exit(main(sys.argv[1:]))
