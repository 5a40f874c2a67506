"""The default defence: clip each update to a multiple of the median norm of earlier rounds.

    bound_t = multiplier * median(last `window` update norms of rounds < t)
    x_i    <- x_i * min(1, bound_t / ||x_i||)          (clip, not reject)

then the usual weighted mean; in async mode each clipped x_i is then weighted by its staleness
weight f(s_i) (clip, then weight, as FedBuff does: the bound and the history are raw norms, so
stale updates do not shrink the bound a fresh one is held to). (How much a claimed weight may
count is coordinator/weights.py's concern, not this one's.) The bound comes only from earlier
rounds, so an update is clipped the moment it arrives and the round keeps a running sum: memory O(model) plus O(window)
scalars, whatever k is. An attacker who is a minority of the recent reports cannot move the
median much (it is their order statistic, not their magnitude, that counts), so one huge update
is cut to bound_t. Until `min_history` norms have been seen, `initial_bound` applies; 0 (the
default) means the round's own median: the first rounds keep their updates (O(k x model),
those rounds only) and clip them to `multiplier` x the median of their own norms, so the
first round is protected too.

An update over `exclude_multiplier` x the median norm is left out of the mean rather than
clipped in, unless every update of the round is (the bound is stale). An update claiming c
times the median claim may be min(max(c, 1), `exclude_claim_allowance`) times further out: an
update's norm grows with the examples it trained on, and without the allowance a data-rich
honest device's updates are left out.

With `device_clip` (the default) a sync round's dense-update tasks carry `bound_t` as
compression.clip_norm (records._device_clip has the conditions), so an honest device clips what
it sends, error feedback included, to the bound the coordinator enforces here; the coordinator
still clips (and excludes) whatever arrives, from devices that ignore it.

The claimed weight is bounded the same way: min(w_i, weight_multiplier x the median claim of
earlier rounds' updates, or of this round's in the first rounds). A fixed cap alone
(coordinator/weights.py) still lets one device claim the cap and outweigh a fleet of small
devices; relative to the median it counts at most as much as `weight_multiplier` typical ones.

Pure: the history is a frozen value; the caller records each committed round's norms into it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .clipping import clip_scale
from .errors import BadRobustParameter, RobustError

# A claim the relative weight cap cut by more than this factor is counted (fedge_claims_cut_total)
# and its device logged (coordinator/left_out.py): an honest fleet's claims differ by less, a
# device that claims far more than it can have trained on (huge_weight) by more.
NOTED_CUT = 4.0


@dataclass(frozen=True)
class NormBoundConfig:
    multiplier: float = 2.0  # clip to this many times the running median norm
    window: int = 200  # the median runs over this many most recent update norms
    min_history: int = 5  # fewer earlier norms than this: initial_bound applies
    initial_bound: float = 0.0  # L2 bound before the history is long enough; 0 = the round's own median
    weight_multiplier: float = 1.0  # a weight counts at most this many times the median claim; 0 = no cap
    # An update over this many times the median norm is left out of the mean, not clipped into
    # it (unless all of the round's are); 0 = never. Why 4: a model-replacement backdoor's updates
    # sat at a median 5.9x the running median on the Dirichlet 0.1 bench, honest ones at most 5.1x
    # (0.1% over 3.5x); see the README, Robust aggregation.
    exclude_multiplier: float = 4.0
    # An update claiming c times the median claim may be min(max(c, 1), this) times further out
    # before it is left out: an update's norm grows with the examples it trained on, so a
    # data-rich honest device's updates can be over the bound. 1 = none, the default: any
    # allowance (1.5 or 2.5) let enough boosted backdoor updates in on the Dirichlet bench to
    # lift its success from 0.02 to 0.08-0.12 (README, Robust aggregation). For fleets whose
    # data volumes differ by more than about 3x, 2.5 keeps every bound at most the old 10x. The
    # claim is the weight after the fixed cap: under weighting = "equal" the allowance does nothing.
    exclude_claim_allowance: float = 1.0
    # The round's tasks ask devices to clip to the clip bound (compression.clip_norm), when the
    # operator set no clip_norm of their own and the bound is known before the round (a history
    # or initial_bound); not with top-k, a multiplier under 1, or async mode (records._device_clip
    # says why). The bound then holds for what an honest device sends, with its error feedback
    # (kernel/compress.py), and a data-rich honest device's update is clipped at the source
    # instead of left out by the exclusion bound: on a quantity-skewed fleet 0-2 of 200 honest
    # updates were left out with it, 2-23 without (README, Robust aggregation). A device that
    # ignores it is clipped, or left out, by the coordinator as before.
    device_clip: bool = True

    def __post_init__(self) -> None:
        if not (self.multiplier > 0 and math.isfinite(self.multiplier)):
            raise BadRobustParameter(f"norm bound: multiplier must be > 0, got {self.multiplier}")
        if self.window < 1:
            raise BadRobustParameter(f"norm bound: window must be >= 1, got {self.window}")
        if not 1 <= self.min_history <= self.window:
            raise BadRobustParameter(f"norm bound: min_history must be in [1, window = {self.window}], "
                                     f"got {self.min_history}")
        if not (self.initial_bound >= 0 and math.isfinite(self.initial_bound)):
            raise BadRobustParameter("norm bound: initial_bound must be >= 0 (0 = the round's own median)")
        if not (self.exclude_multiplier == 0 or self.multiplier <= self.exclude_multiplier < math.inf):
            raise BadRobustParameter("norm bound: exclude_multiplier must be 0 (never) or >= multiplier")
        if not (1 <= self.exclude_claim_allowance < math.inf):
            raise BadRobustParameter("norm bound: exclude_claim_allowance must be >= 1 (1 = none) and finite")
        if not (self.weight_multiplier >= 0 and math.isfinite(self.weight_multiplier)):
            raise BadRobustParameter("norm bound: weight_multiplier must be >= 0 (0 = no relative weight cap)")
        if not isinstance(self.device_clip, bool):
            raise BadRobustParameter("norm bound: device_clip must be true or false")


@dataclass(frozen=True)
class NormHistory:
    """Update norms of committed rounds, oldest first, at most `window` of them."""

    norms: tuple[float, ...] = ()

    def median(self, cfg: NormBoundConfig) -> float | None:
        """The median of the history; None before `min_history` values."""
        return float(np.median(self.norms)) if len(self.norms) >= cfg.min_history else None

    def bound(self, cfg: NormBoundConfig) -> float:
        """The L2 bound for the next round; inf = none."""
        median = self.median(cfg)
        return (cfg.initial_bound or math.inf) if median is None else cfg.multiplier * median

    def exclusion(self, cfg: NormBoundConfig) -> float:
        """Norms above this are left out of the next round's mean; inf = none."""
        median = self.median(cfg)
        return math.inf if median is None or not cfg.exclude_multiplier else cfg.exclude_multiplier * median

    def weight_cap(self, cfg: NormBoundConfig) -> float:
        """Read as a history of claimed weights: the cap for the next round; inf = none yet."""
        median = self.median(cfg)
        return math.inf if median is None or not cfg.weight_multiplier else cfg.weight_multiplier * median

    def record(self, norms, cfg: NormBoundConfig) -> NormHistory:
        """The history after a committed round with these (pre-clip) norms."""
        norms = tuple(float(n) for n in norms if math.isfinite(n))
        return NormHistory((self.norms + norms)[-cfg.window :])


def claim_allowance(cfg: NormBoundConfig, claim: float, median_claim: float | None) -> float:
    """How many times further out than the exclusion bound an update claiming `claim` examples
    may be: its claim over the median claim, between 1 and cfg.exclude_claim_allowance (1 with
    no median to compare with). A liar gains at most the allowance; it gains no weight by it."""
    if not median_claim or not (median_claim > 0 and math.isfinite(median_claim)):
        return 1.0
    if not (claim > 0 and math.isfinite(claim)):  # refused upstream; never widen the bound for one
        return 1.0
    return min(max(claim / median_claim, 1.0), cfg.exclude_claim_allowance)


def round_limits(cfg: NormBoundConfig, norms, claims) -> tuple[float, float, float]:
    """(clip bound, exclusion bound, weight cap) from one round's own update norms and claimed
    weights: what the first rounds use, before the history is long enough. inf = none."""
    median = float(np.median(norms))
    bound = cfg.multiplier * median or math.inf
    exclusion = cfg.exclude_multiplier * median if cfg.exclude_multiplier and median else math.inf
    cap = cfg.weight_multiplier * float(np.median(claims)) if cfg.weight_multiplier else math.inf
    return bound, max(bound, exclusion), cap


class ClippedMean:
    """Streaming weighted mean of clipped updates: O(model) memory however many arrive.

    An update whose norm is over `exclude_above` is left out of the mean (its norm is still
    returned for the history) unless every update of the round is: clipping alone still adds
    such an update at the bound, in whatever direction it chose, round after round."""

    def __init__(self, bound: float = math.inf, exclude_above: float = math.inf) -> None:
        if not bound > 0:
            raise BadRobustParameter(f"the norm bound must be > 0 (inf = none), got {bound}")
        if not exclude_above >= bound:
            raise BadRobustParameter(f"exclude_above ({exclude_above}) must be >= the bound ({bound})")
        self.bound = bound
        self.exclude_above = exclude_above
        self.total: np.ndarray | None = None  # (d,) float64: sum of w_i * clipped x_i
        self.total_weight = 0.0
        self.excluded: np.ndarray | None = None  # the same sum over excluded updates: used only if all are
        self.excluded_weight = 0.0
        self.norms: list[float] = []  # pre-clip norms, for NormHistory.record
        self.clipped = 0  # updates whose norm was over the bound
        self.left_out: list[bool] = []  # per update, in order: over its exclusion bound

    def add(self, update, weight: float = 1.0, allowance: float = 1.0, factor: float = 1.0) -> float:
        """Clip and add one flattened update; returns its pre-clip norm. It is left out when its
        norm is over `allowance` x the exclusion bound (claim_allowance). `factor`: async's
        staleness weight f(s), applied to the clipped update (clip, then weight: FedBuff's order),
        so the bound and the history see the raw norm."""
        x = np.asarray(update, np.float64)
        if x.ndim != 1 or not np.all(np.isfinite(x)):
            raise RobustError("ClippedMean.add takes one finite flattened update")
        if not (weight > 0 and math.isfinite(weight)):
            raise RobustError(f"weight must be finite and > 0, got {weight}")
        if self.norms and x.size != (self.total if self.total is not None else self.excluded).size:
            raise RobustError(f"update has {x.size} values, earlier ones a different count")
        norm = float(np.linalg.norm(x))
        scale = float(clip_scale(norm, self.bound))
        self.clipped += scale < 1.0
        contrib = x * (scale * float(weight) * float(factor))  # factor 1 (sync): the same bits as without it
        left_out = norm > self.exclude_above * allowance
        self.left_out.append(bool(left_out))
        if left_out:
            self.excluded = contrib if self.excluded is None else self.excluded + contrib
            self.excluded_weight += float(weight)
        else:
            self.total = contrib if self.total is None else self.total + contrib
            self.total_weight += float(weight)
        self.norms.append(norm)
        return norm

    @property
    def excluded_count(self) -> int:
        return sum(self.left_out)

    def result(self) -> np.ndarray:
        if self.total is not None:
            return self.total / self.total_weight
        if self.excluded is not None:  # every update was an outlier: the bound is stale, so clip them
            return self.excluded / self.excluded_weight
        raise RobustError("no updates to aggregate (k = 0)")
