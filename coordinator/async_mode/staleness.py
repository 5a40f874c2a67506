"""Staleness weights and FedBuff's buffered step, in plain numpy (no I/O, no clock).

An update trained on model version b and accepted while version v is current has
staleness s = v - b (versions published since its base). FedBuff (Nguyen et al. 2022,
Algorithm 1) scales each update by a staleness function and steps once per K updates:

    f(s)    = (1 + s)^-a            polynomial, a = 0.5 by default (the paper's choice)
    Δ_buf   = Σ_i w_i f(s_i) Δ_i / Σ_i w_i

w_i is the update's FedAvg weight (its capped num_examples, or 1 with weighting = "equal",
when Δ_buf is the paper's (1/K) Σ f(s_i) Δ_i). f is not renormalised: a buffer of stale
updates moves the model less than a buffer of fresh ones, which is the point. The robust
rules get the raw delta and f(s) (aggregate.py, weights_staleness): the norm bound clips Δ_i
by the history of raw norms and weights the clipped delta, clip(Δ_i) f(s_i), as FedBuff does;
clipping f(s) Δ_i against a history of scaled norms once held a fresh update to the shrunken
norms of stale ones. Central DP's DpMean does the same with its clip S, f(s_i) clip_S(Δ_i):
with 0 < f <= 1 each update still adds at most S; scaled first, an update over S / f(s) was
clipped back to S and counted as a fresh one. The other aggregators get f(s) Δ_i.

The server optimizer (coordinator/strategies) then applies Δ_buf as it applies a round's
mean. Updates with s > max_staleness are not weighted at all: they are rejected.
"""

from __future__ import annotations

import numpy as np

Params = dict[str, np.ndarray]
STALENESS_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 21, 34, 55)  # fedge_async_staleness's histogram buckets (versions)


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """f(s) = (1 + s)^-exponent; exponent 0 is the constant weight 1."""
    if staleness < 0:
        raise ValueError(f"staleness must be >= 0, got {staleness}")
    return float((1.0 + staleness) ** -exponent)


def is_too_stale(staleness: int, max_staleness: int) -> bool:
    """True when an update must be rejected as stale_update."""
    return staleness > max_staleness


def scale(delta: Params, factor: float) -> Params:
    """The delta times f(s), in float64 (the aggregators accumulate in float64)."""
    return {k: np.asarray(v, np.float64) * factor for k, v in delta.items()}


def buffered_mean(deltas: list[Params], weights: list[float], staleness: list[int],
                  exponent: float = 0.5) -> Params:
    """Δ_buf = Σ w_i f(s_i) Δ_i / Σ w_i (module docstring), float64."""
    if not deltas or not (len(deltas) == len(weights) == len(staleness)):
        raise ValueError("need one weight and one staleness per delta, and at least one delta")
    w = np.asarray(weights, np.float64)
    if not np.all(w > 0):
        raise ValueError("weights must be > 0")
    f = np.array([staleness_weight(s, exponent) for s in staleness])
    return {name: np.tensordot(w * f, np.stack([np.asarray(d[name], np.float64) for d in deltas]), axes=1) / w.sum()
            for name in deltas[0]}
