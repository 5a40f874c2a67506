"""Sparsification under secure aggregation: one coordinate subset for the whole round.

Per-device top-k leaks under SecAgg: a coordinate only one device sent shows that device's
exact value in the sum. So every device of a round sends the same coordinates, drawn from the
round's public seed (random-k); error feedback keeps the unsent rest on the device.
"""

from __future__ import annotations

import numpy as np


def shared_coordinates(dimension: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction * dimension) coordinates (at least one), the same on
    every device that knows the round's seed."""
    if not 0 < fraction <= 1:
        raise ValueError(f"the kept fraction must be in (0, 1], got {fraction!r}")
    if fraction == 1:
        return np.arange(dimension)
    keep = max(1, round(fraction * dimension))
    return np.sort(np.random.default_rng([seed, 0x5AB5E7]).choice(dimension, size=keep, replace=False))
