"""The model guard: what a new global model must pass before it is committed. Pure.

Every update is checked for finite values on the way in (validation.py), yet the aggregate
can still overflow: float32 deltas near 3e38 sum to inf, a server optimizer divides by a
second moment that underflowed. A committed non-finite model would go out to every device
and poison every later round, so the coordinator abandons such a round instead, with the
reason this module names, and keeps the model it had.
"""

from __future__ import annotations

import math

import numpy as np

NON_FINITE_MODEL = "non_finite_model"  # RoundRecord.why of a round the guard refused


def model_fault(params: dict[str, np.ndarray], extra: dict[str, dict[str, np.ndarray]] | None = None) -> str | None:
    """None when the params and the strategy's state are all finite, else why not (naming a tensor)."""
    groups = {"params": params, **(extra or {})}
    for group, tensors in groups.items():
        for name, value in tensors.items():
            if not np.all(np.isfinite(value)):
                return f"{NON_FINITE_MODEL}: {group} {name} holds NaN or Inf"
    return None


HOLDOUT_REGRESSED = "holdout_regressed"  # RoundRecord.why: the candidate did much worse on the guard set


def mean_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean of -log softmax(logits)[label] over rows, in float64; (rows, classes), (rows,).
    inf when a logit is NaN or inf (a model whose outputs overflowed scores nothing), without
    the RuntimeWarning that inf - inf printed into the coordinator's log."""
    z = np.asarray(logits, np.float64)
    if not np.isfinite(z).all():
        return math.inf
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels, np.int64)].mean())


def holdout_fault(current_loss: float, candidate_loss: float, max_ratio: float) -> str | None:
    """None when the candidate's loss on the guard set is finite and at most max_ratio times
    the current model's, else why not."""
    if np.isfinite(candidate_loss) and candidate_loss <= max_ratio * current_loss:
        return None
    return (f"{HOLDOUT_REGRESSED}: guard-set loss {candidate_loss:.4g} > {max_ratio:g} x {current_loss:.4g} "
            "(current model)")


def commit_fault(current, candidate, holdout=None) -> str | None:
    """Why the candidate ServerState must not replace the current one, or None: a non-finite
    value anywhere, then (with a guard set, holdout.py) a loss regression on it."""
    fault = model_fault(candidate.params, candidate.extra)
    if fault is None and holdout is not None:
        fault = holdout.fault(current.version, current.params, candidate.params)
    return fault
