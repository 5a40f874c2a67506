"""Leave-one-out screening on the coordinator's guard set: leave out the updates without which
the round's mean does better on the guard set, one at a time, the most harmful first.

    m_S      = sum_{j in S} w_j x_j / sum_{j in S} w_j      the mean of the updates S kept so far
    harm_i   = L(m_S) - L(m_{S - i})                        L: the guard-set loss of the current
                                                            model moved by a delta
    repeat:  drop argmax_i harm_i while it is > tolerance and more than ceil(min_keep x k) remain

(backward elimination: after each drop the harms are taken again on what is left, so two
colluders who send the same update cannot hide behind each other). A loss that is NaN or inf
counts as +inf: an update without which the mean scores a number again is dropped first, and
nothing here raises on a loss. At least ceil(min_keep x k) of the k updates screened stay
(the aggregator screens those the norm bound's exclusion left), since attackers are assumed a
minority of a round: a guard set that disagrees with most of the fleet says more about the
guard set than about the fleet.

Why leave-one-out, and why on the mean: on label-skewed data an honest device's update moves
the model toward its own few classes, so alone it makes a class-balanced guard set worse, and
its direction is no closer to the round's mean or the last aggregate than a sign-flipped one
(measured: README, Robust aggregation). What tells them apart is what each does to the mean
the round will apply: an honest update adds what its classes miss in the others', a flipped
or crafted one takes it away. This is Zeno's idea (Xie, Koyejo, Gupta, ICML 2019: score each
update by the validation loss it causes) applied to the update's marginal effect on the
aggregate instead of a step of its own.

Costs at most k (k + 1) / 2 + k evaluations of L per round (each on the guard set) and the
round's k clipped updates: O(k x model) memory. Pure: `loss` is injected (the coordinator's
holdout.HoldoutCheck on the current model).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ._inputs import as_matrix
from .errors import BadRobustParameter, RobustError


@dataclass(frozen=True)
class ScreenConfig:
    enabled: bool = True  # screen whenever the coordinator has a guard set ([coordinator] guard_set)
    tolerance: float = 0.0  # keep an update whose harm (guard-set loss, nats) is at most this
    min_keep: float = 0.5  # keep at least this share of the round's updates, the least harmful

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise BadRobustParameter(f"screen: enabled must be true or false, got {self.enabled!r}")
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise BadRobustParameter(f"screen: tolerance must be a finite number >= 0, got {self.tolerance}")
        if not 0 < self.min_keep <= 1:
            raise BadRobustParameter(f"screen: min_keep must be in (0, 1], got {self.min_keep}")


def leave_one_out_harm(rows, weights, loss: Callable[[np.ndarray], float]) -> np.ndarray:
    """harm_i = loss(mean of all) - loss(mean of all but i), weighted means of the (k, d) rows."""
    x = as_matrix(rows)
    w = np.asarray(weights, np.float64)
    if w.shape != (x.shape[0],) or not np.all(w > 0) or not np.all(np.isfinite(w)):
        raise RobustError(f"screening needs one finite weight > 0 per update, got shape {w.shape}")
    k = x.shape[0]
    if k < 2:
        return np.zeros(k)
    total, weight = w @ x, float(w.sum())
    full = _finite_or_inf(loss(total / weight))
    without = np.array([_finite_or_inf(loss((total - w[i] * x[i]) / (weight - w[i]))) for i in range(k)])
    with np.errstate(invalid="ignore"):
        harm = full - without
    # inf - inf: the mean blows up with or without i, so i alone says nothing (0); an update
    # whose removal brings the loss back to a number is +inf harmful, one that keeps it finite -inf.
    return np.where(np.isnan(harm), 0.0, harm)


def _finite_or_inf(value) -> float:
    """A loss as a float, NaN and -inf read as +inf (a model that scores nothing is the worst)."""
    value = float(value)
    return value if np.isfinite(value) else np.inf


def screen(rows, weights, loss: Callable[[np.ndarray], float], cfg: ScreenConfig) -> np.ndarray:
    """Which of the (k, d) rows stay (a bool mask): backward elimination by leave-one-out harm."""
    x = as_matrix(rows)
    w = np.asarray(weights, np.float64)
    keep = np.ones(x.shape[0], bool)
    least = max(1, math.ceil(cfg.min_keep * x.shape[0]))  # of the rows given (ScreenedAggregator: after exclusion)
    while keep.sum() > least:
        kept = np.flatnonzero(keep)
        harm = leave_one_out_harm(x[kept], w[kept], loss)
        worst = int(np.argmax(harm))  # the first of equals: the earlier arrival goes first
        if harm[worst] <= cfg.tolerance:
            break
        keep[kept[worst]] = False
    return keep
