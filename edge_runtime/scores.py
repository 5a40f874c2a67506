"""A device's scores of a model on its held-out split: accuracy and cross-entropy from logits."""

from __future__ import annotations

import numpy as np

from .kernel.errors import NonFiniteValues


def accuracy(logits: np.ndarray | None, y: np.ndarray, strict: bool = True) -> float | None:
    """Fraction of rows whose largest logit is the label; None without logits or examples.

    argmax picks the first NaN, so a model whose outputs overflow (finite weights can do that)
    scored as if it said class 0, and a federated evaluation then kept it as the device's
    global model. Rows with a non-finite logit are a NonFiniteValues when `strict`, and count
    as wrong otherwise (the simulator's scores of a fine-tune)."""
    if logits is None or not len(y):
        return None
    finite = np.all(np.isfinite(logits), axis=1)
    if strict and not finite.all():
        raise NonFiniteValues(f"the model's outputs on {int((~finite).sum())} of the {len(y)} held-out examples "
                              "are not finite numbers")
    return float(np.mean((np.argmax(logits, axis=1) == y) & finite))


def cross_entropy(logits: np.ndarray | None, y: np.ndarray) -> float | None:
    """Mean -log softmax(logits)[y] in float64 (log-sum-exp shifted by the row max). NaN when a
    logit is not finite (an eval report sends MAX_EVAL_LOSS for it: evaluation.py), without the
    RuntimeWarning of inf - inf in the device's log."""
    if logits is None or not len(y):
        return None
    z = np.asarray(logits, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        z = z - z.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(z).sum(axis=1))
        return float(np.mean(log_norm - z[np.arange(len(y)), np.asarray(y, dtype=np.int64)]))
