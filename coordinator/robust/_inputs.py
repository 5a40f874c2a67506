"""Input checks shared by the rules."""

from __future__ import annotations

import numpy as np

from .errors import RobustError


def as_matrix(updates) -> np.ndarray:
    """(k, d) float64 copy-free view when possible; refuses empty, ragged and non-finite input."""
    x = np.asarray(updates, dtype=np.float64)
    if x.ndim != 2:
        raise RobustError(f"updates must be a (k, d) matrix of flattened deltas, got shape {x.shape}")
    if x.shape[0] == 0:
        raise RobustError("no updates to aggregate (k = 0)")
    if not np.all(np.isfinite(x)):
        # Every rule here orders or measures distances; one NaN poisons both.
        raise RobustError("updates hold NaN or Inf; validation must drop them before aggregation")
    return x
