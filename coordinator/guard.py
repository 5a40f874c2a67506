"""The model guard: what a new global model must pass before it is committed. Pure.

Every update is checked for finite values on the way in (validation.py), yet the aggregate
can still overflow: float32 deltas near 3e38 sum to inf, a server optimizer divides by a
second moment that underflowed. A committed non-finite model would go out to every device
and poison every later round, so the coordinator abandons such a round instead, with the
reason this module names, and keeps the model it had.
"""

from __future__ import annotations

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
