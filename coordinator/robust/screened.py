"""norm_bound when it keeps the round's rows: with a guard set (screening.py) or the gated sign
split (`[robust.sign] gap > 0`, sign_split.py). Memory O(k x model), where norm_bound alone
streams in O(model); make_aggregator (aggregators.py) builds it only then.

    rows       the updates clipped and capped as norm_bound would (bound, exclusion bound and
               weight cap from the history, or the round's own medians before there is one);
               those over the exclusion bound are left out          -> excluded_ids
    1. split   the sign split's minority, when it leaves one out    -> sign_split_ids
    2. clip    [robust.sign] round_clip = c: each kept update to c x the kept updates' median norm
    weight     async: each kept update times its staleness weight f(s), after both clips (clip,
               then weight, as norm_bound.py: stale updates do not shrink a fresh one's bound)
    3. screen  with a guard set: leave-one-out harm on it           -> screened_ids
    mean       the weighted mean of what is left

Each stage sees only what the one before kept, and each list names the updates it left out,
for coordinator/left_out.py's log and metrics. The split's RNG is the round's
(AggregatorContext.rng: from (seed, round)), so a restarted round replays into the same split.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .aggregators import RobustState, _Base
from .clipping import clip_scale
from .errors import RobustError
from .flat import Params, unflatten
from .norm_bound import NormBoundConfig, claim_allowance, round_limits
from .screening import ScreenConfig, screen
from .sign_split import SignSplitConfig, clip_to_median, gated_keep


class ScreenedAggregator(_Base):
    """norm_bound over the round's kept rows (O(k x model)), then the sign split and the guard
    set's screening, each where it is on (the module docstring has the order)."""

    def __init__(self, cfg: NormBoundConfig, screen_cfg: ScreenConfig, state: RobustState,
                 guard_loss: Callable[[Params], float] | None, sign: SignSplitConfig | None = None,
                 rng: np.random.Generator | None = None) -> None:
        super().__init__()
        self.norm_cfg, self.screen_cfg, self.guard_loss = cfg, screen_cfg, guard_loss
        self.sign = sign or SignSplitConfig()
        if self.sign.enabled and rng is None:
            raise RobustError("the sign split needs the round's RNG")
        self.rng = rng
        self.history_bound = state.history.bound(cfg)
        self.history_exclusion = state.history.exclusion(cfg)
        self.history_cap = state.claims.weight_cap(cfg)
        self.history_median_claim = state.claims.median(cfg)
        self.rows: list[np.ndarray] = []
        self.factors: list[float] = []  # staleness weights (async), applied after the clip
        self.screened_ids: list[str | None] = []  # set by mean(): the updates the guard set left out
        self.sign_split_ids: list[str | None] = []  # set by mean(): the updates the sign split left out

    @property
    def task_clip(self) -> float:
        """The history's bound; inf before there is one (the round's own medians then apply)."""
        return self.history_bound if 0 < self.history_bound < math.inf else math.inf

    @property
    def screened_out(self) -> int:
        return len(self.screened_ids)

    def _add(self, vec: np.ndarray, weight: float, factor: float) -> None:
        self.rows.append(vec)
        self.factors.append(factor)
        self.norms.append(float(np.linalg.norm(vec)))

    def _limits(self) -> tuple[float, float, float]:
        """(clip bound, exclusion bound, weight cap) for this round, as norm_bound sets them."""
        if self.task_clip < math.inf:
            return self.task_clip, max(self.task_clip, self.history_exclusion), self.history_cap
        return round_limits(self.norm_cfg, self.norms, self.claims)

    def _reduce(self) -> np.ndarray:
        bound, exclusion, cap = self._limits()
        self._note_cuts(cap)
        norms = np.array(self.norms)
        median_claim = self.history_median_claim if self.task_clip < math.inf else float(np.median(self.claims))
        inside = norms <= exclusion * np.array([claim_allowance(self.norm_cfg, c, median_claim) for c in self.claims])
        if not inside.any():  # every update over the exclusion bound: the bound is stale (ClippedMean)
            inside[:] = True
        scale = clip_scale(norms, bound)
        rows = np.stack([r * s for r, s, keep in zip(self.rows, scale, inside) if keep])
        weights = np.minimum(np.array(self.claims)[inside], cap)
        factors = np.array(self.factors)[inside]  # staleness weights (async), applied after every clip
        self.excluded_ids = [i for i, keep_it in zip(self.ids, inside) if not keep_it]
        ids = [i for i, keep_it in zip(self.ids, inside) if keep_it]
        if self.sign.enabled:
            keep = gated_keep(rows, self.rng, self.sign.gap, self.sign.share, self.sign.min_inputs)
            self.sign_split_ids = [i for i, kept in zip(ids, keep) if not kept]
            rows, weights, ids = rows[keep], weights[keep], [i for i, kept in zip(ids, keep) if kept]
            factors = factors[keep]
            if self.sign.round_clip:
                rows = clip_to_median(rows, self.sign.round_clip)
        if (factors != 1).any():  # clip, then weight; in sync every factor is 1: no pass over the rows
            rows *= factors[:, None]  # rows is this method's own array (np.stack, a mask or a clip made it)
        if self.guard_loss is not None:
            keep = screen(rows, weights, lambda v: self.guard_loss(unflatten(v, self.like)), self.screen_cfg)
            self.screened_ids = [i for i, kept in zip(ids, keep) if not kept]
            rows, weights = rows[keep], weights[keep]
        return weights @ rows / float(weights.sum())
