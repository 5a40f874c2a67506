"""Probe: log each round's updates and the model they trained on, under the default rule.

Registers `nb_log` (NormBoundThen with every kept row used: the default's clip, cap and
exclusion, then the weighted mean) that writes, per round, the raw updates (all shared tensors,
flattened in sorted-name order), their device ids and claims, and the round's model (params,
names, sizes) to $LF_LOG/round-XXXX.npz. It also exports CURRENT: the params and round id of the
round being opened, read from open_round's frame (no aggregator is given the model today).
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "2026-12-06-robust-research"))
import probe  # noqa: E402,F401  (registers the nb_ rules)

from fedge.coordinator import records  # noqa: E402
from fedge.coordinator.aggregate import AGGREGATORS, register_aggregator  # noqa: E402
from fedge.coordinator.robust.aggregators import EXTRA_KEY, RobustConfig, RobustState  # noqa: E402

CURRENT: dict = {}
_orig_make = records.make_aggregator


def _make(name, context):
    state = sys._getframe(1).f_locals.get("state")
    if state is not None:
        CURRENT["params"] = {k: np.asarray(v) for k, v in state.params.items()}
        CURRENT["round"] = context.round_id
    return _orig_make(name, context)


records.make_aggregator = _make


class Logged(probe.NormBoundThen):
    def __init__(self, cfg, state, rng):
        super().__init__(lambda x, w, r: probe._kept_mean(x, w, np.ones(len(x), bool)), cfg, state, rng)
        self.params = CURRENT.get("params")
        self.round = CURRENT.get("round", -1)
        self.heads = []

    def add(self, tensors, meta):
        self.heads.append(np.concatenate([np.asarray(tensors[k], np.float64).ravel() for k in sorted(tensors)]))
        super().add(tensors, meta)

    def _reduce(self):
        out = super()._reduce()
        folder = os.environ.get("LF_LOG")
        if folder and self.params is not None:
            p = self.params
            np.savez(os.path.join(folder, f"round-{self.round:04d}.npz"), heads=np.stack(self.heads),
                     ids=np.array([str(i) for i in self.ids]), claims=np.array(self.claims),
                     params=np.concatenate([np.asarray(p[k], np.float64).ravel() for k in sorted(p)]),
                     names=np.array(sorted(p)), sizes=np.array([np.asarray(p[k]).size for k in sorted(p)]))
        return out


def _factory(ctx):
    cfg = ctx.settings if isinstance(ctx.settings, RobustConfig) else RobustConfig()
    state = RobustState.from_extra(ctx.extra.get(EXTRA_KEY))
    agg = Logged(cfg, state, ctx.rng())
    agg.cfg, agg.prior = cfg, RobustState.from_extra(ctx.extra.get(EXTRA_KEY))
    return agg


if "nb_log" not in AGGREGATORS:
    register_aggregator("nb_log", _factory)

if __name__ == "__main__":
    from fedge.tools.bench.robustness import main

    sys.exit(main(sys.argv[1:]))
