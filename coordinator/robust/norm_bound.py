"""The default defence: clip each update to a multiple of the median norm of earlier rounds.

    bound_t = multiplier * median(last `window` update norms of rounds < t)
    x_i    <- x_i * min(1, bound_t / ||x_i||)          (clip, not reject)
    w_i    <- min(w_i, weight_multiplier * median(last `window` claimed weights of rounds < t))

then the usual weighted mean. The bound comes only from earlier rounds, so an update is clipped
the moment it arrives and the round keeps a running sum: memory O(model) plus O(window)
scalars, whatever k is. An attacker who is a minority of the recent reports cannot move the
median much (it is their order statistic, not their magnitude, that counts), so one huge update
is cut to bound_t and one huge weight claim to the weight cap. Until `min_history` norms have
been seen, `initial_bound` applies (0 = no bound in the first rounds; set it when the first
rounds must be protected too).

Pure: the history is a frozen value; the caller records each committed round's norms into it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .clipping import clip_scale
from .errors import BadRobustParameter, RobustError


@dataclass(frozen=True)
class NormBoundConfig:
    multiplier: float = 3.0  # clip to this many times the running median norm
    window: int = 200  # the median runs over this many most recent update norms
    min_history: int = 5  # fewer earlier norms than this: initial_bound applies
    initial_bound: float = 0.0  # L2 bound before the history is long enough; 0 = none
    weight_multiplier: float = 0.0  # cap claimed weights at this many times their running median; 0 = off

    def __post_init__(self) -> None:
        if not (self.multiplier > 0 and math.isfinite(self.multiplier)):
            raise BadRobustParameter(f"norm bound: multiplier must be > 0, got {self.multiplier}")
        if self.window < 1 or not 1 <= self.min_history <= self.window:
            raise BadRobustParameter("norm bound: need window >= 1 and 1 <= min_history <= window")
        if not (self.initial_bound >= 0 and math.isfinite(self.initial_bound)):
            raise BadRobustParameter("norm bound: initial_bound must be >= 0 (0 = none)")
        if not (self.weight_multiplier >= 0 and math.isfinite(self.weight_multiplier)):
            raise BadRobustParameter("norm bound: weight_multiplier must be >= 0 (0 = off)")


@dataclass(frozen=True)
class NormHistory:
    """Update norms and claimed weights of committed rounds, oldest first, at most `window` each."""

    norms: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()

    def bound(self, cfg: NormBoundConfig) -> float:
        """The L2 bound for the next round; inf = none."""
        if len(self.norms) < cfg.min_history:
            return cfg.initial_bound or math.inf
        return cfg.multiplier * float(np.median(self.norms))

    def weight_cap(self, cfg: NormBoundConfig) -> float:
        if cfg.weight_multiplier == 0 or len(self.weights) < cfg.min_history:
            return math.inf
        return cfg.weight_multiplier * float(np.median(self.weights))

    def record(self, norms, weights, cfg: NormBoundConfig) -> "NormHistory":
        """The history after a committed round with these (pre-clip) norms and claimed weights."""
        norms = tuple(float(n) for n in norms if math.isfinite(n))
        weights = tuple(float(w) for w in weights if math.isfinite(w))
        return NormHistory((self.norms + norms)[-cfg.window :], (self.weights + weights)[-cfg.window :])


class ClippedMean:
    """Streaming weighted mean of clipped updates: O(model) memory however many arrive."""

    def __init__(self, bound: float, weight_cap: float = math.inf) -> None:
        if not bound > 0 or not weight_cap > 0:
            raise BadRobustParameter(f"bound and weight cap must be > 0, got {bound}, {weight_cap}")
        self.bound, self.weight_cap = bound, weight_cap
        self.total: np.ndarray | None = None  # (d,) float64: sum of w_i * clipped x_i
        self.total_weight = 0.0
        self.norms: list[float] = []  # pre-clip norms, for NormHistory.record
        self.weights: list[float] = []  # claimed weights, likewise
        self.clipped = 0  # updates whose norm was over the bound

    def add(self, update, weight: float = 1.0) -> float:
        """Clip and add one flattened update; returns the weight actually used."""
        x = np.asarray(update, np.float64)
        if x.ndim != 1 or not np.all(np.isfinite(x)):
            raise RobustError("ClippedMean.add takes one finite flattened update")
        if not (weight > 0 and math.isfinite(weight)):
            raise RobustError(f"weight must be finite and > 0, got {weight}")
        if self.total is not None and x.shape != self.total.shape:
            raise RobustError(f"update has {x.size} values, earlier ones {self.total.size}")
        norm = float(np.linalg.norm(x))
        scale = float(clip_scale(norm, self.bound))
        self.clipped += scale < 1.0
        used = min(float(weight), self.weight_cap)
        contrib = x * (scale * used)
        self.total = contrib if self.total is None else self.total + contrib
        self.total_weight += used
        self.norms.append(norm)
        self.weights.append(float(weight))
        return used

    def result(self) -> np.ndarray:
        if self.total is None:
            raise RobustError("no updates to aggregate (k = 0)")
        return self.total / self.total_weight
