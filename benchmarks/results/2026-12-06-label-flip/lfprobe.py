"""Probe: the shipped sign split, then a screen on each update's cosine with the current model.

An update trained on flipped labels moves the model against what it has learned: its cosine
with the current shared parameters (theta, the model the round sent) is negative, where honest
updates, as training grows the weights it relies on, sit mostly above zero (logprobe.py's logs:
AUC 0.89-0.96 over rounds 20-100 on seeds 0 and 2). Rules (each after the default's clip, cap
and exclusion, as probe.NormBoundThen):

    th_abs      leave out rows with cos(row, theta) < -0.01
    ss_th_abs   the shipped sign split (gap 4), then th_abs on what it kept
    ss_th_z     the split, then leave out rows with cos < 0 and a robust z < -2 in the round
                (z = (cos - median) / (1.4826 MAD))
    ss          the split alone (the shipped `sign_split` preset, for a same-sitting reference)
    ss_rep      the split, then leave out the rows of devices whose mean cosine over their updates
                from round 10 on (this one included, at least 3) is under -0.02: a per-device record
                (held in the worker process, reset at round 1; not crash-safe, a probe)
    ss_damp     the split, then each row's weight times max(0, 1 + cos / 0.05) where cos < 0: damped,
                not dropped (0 at cos = -0.05, where the logged attackers' device means begin)
Each screen keeps every row when it would leave out half of them or more, or the round has under 4.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
import logprobe  # noqa: E402  (probe's rules, the current-model hook)
import probe  # noqa: E402

from fedge.coordinator.aggregate import AGGREGATORS, register_aggregator  # noqa: E402
from fedge.coordinator.robust.aggregators import EXTRA_KEY, RobustConfig, RobustState  # noqa: E402
from fedge.coordinator.robust.sign_split import gated_keep  # noqa: E402

MIN_INPUTS = 4


def model_cosines(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=1) * np.linalg.norm(theta)
    return x @ theta / np.where(n > 0, n, 1.0)


def _bounded(keep: np.ndarray) -> np.ndarray:
    """keep, unless it leaves out half the rows or more, or there are too few to judge."""
    k = len(keep)
    if k < MIN_INPUTS or 2 * (k - keep.sum()) >= k:
        return np.ones(k, bool)
    return keep


def theta_abs(x, theta, t=-0.01):
    return _bounded(model_cosines(x, theta) >= t)


def theta_z(x, theta, z=2.0):
    c = model_cosines(x, theta)
    med = np.median(c)
    mad = 1.4826 * np.median(np.abs(c - med))
    return _bounded(~((c < 0) & (c - med < -z * max(mad, 1e-12))))


REPUTATION: dict = {}  # device id -> [cosines from round 10 on]


def reputation_keep(ids, cos, round_id, start=10, floor=-0.02, least=3):
    if round_id == 1:
        REPUTATION.clear()
    if round_id >= start:
        for i, c in zip(ids, cos):
            REPUTATION.setdefault(i, []).append(float(c))
    bad = [len(REPUTATION.get(i, ())) >= least and float(np.mean(REPUTATION[i])) < floor for i in ids]
    return _bounded(~np.array(bad, bool))


class ThetaRule(probe.NormBoundThen):
    def __init__(self, name, cfg, state, rng):
        super().__init__(None, cfg, state, rng)
        p = logprobe.CURRENT.get("params")
        self.theta = None if p is None else np.concatenate([np.asarray(p[k], np.float64).ravel() for k in sorted(p)])
        self.rule = lambda x, w, r: self._rule(name, x, w, r)

    def _rule(self, name, x, w, rng):
        keep = np.ones(len(x), bool)
        if name.startswith("ss"):
            keep = gated_keep(x, rng, 4.0)
        if name == "ss_damp" and self.theta is not None and self.theta.size == x.shape[1]:
            damp = np.clip(1.0 + np.minimum(model_cosines(x, self.theta), 0.0) / 0.05, 0.0, 1.0)
            wd = w * damp * keep
            if wd.sum() <= 0:
                return probe._mean(x, w, keep), keep
            return wd @ x / wd.sum(), keep & (damp > 0)
        if name == "ss_rep" and self.theta is not None and self.theta.size == x.shape[1]:
            ids = [i for i, k in zip(self.ids, self._inside) if k]
            rep = reputation_keep(ids, model_cosines(x, self.theta), logprobe.CURRENT.get("round", 0))
            return probe._mean(x, w, keep & rep if (keep & rep).any() else keep), keep & rep
        if name != "ss" and self.theta is not None and self.theta.size == x.shape[1]:
            sub = theta_abs(x[keep], self.theta) if name.endswith("abs") else theta_z(x[keep], self.theta)
            idx = np.flatnonzero(keep)
            keep[idx[~sub]] = False
        return probe._mean(x, w, keep), keep


def _factory(name):
    def factory(ctx):
        cfg = ctx.settings if isinstance(ctx.settings, RobustConfig) else RobustConfig()
        state = RobustState.from_extra(ctx.extra.get(EXTRA_KEY))
        agg = ThetaRule(name, cfg, state, ctx.rng())
        agg.cfg, agg.prior = cfg, RobustState.from_extra(ctx.extra.get(EXTRA_KEY))
        return agg
    return factory


for _name in ("th_abs", "ss_th_abs", "ss_th_z", "ss", "ss_rep", "ss_damp"):
    if _name not in AGGREGATORS:
        register_aggregator(_name, _factory(_name))

if __name__ == "__main__":
    from fedge.tools.bench.robustness import main

    sys.exit(main(sys.argv[1:]))
