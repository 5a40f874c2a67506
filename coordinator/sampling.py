"""Who trains this round: reproducible from (seed, round), with over-selection."""

from __future__ import annotations

import math

import numpy as np


def selection_size(wanted: int, over_selection: float, available: int) -> int:
    """Devices to ask so that `wanted` reports likely arrive (e.g. 1.3 = ask 30% more)."""
    return min(available, max(wanted, math.ceil(wanted * over_selection)))


def sample_devices(candidates: list[str], count: int, seed: int, round_id: int) -> list[str]:
    """`count` distinct devices drawn uniformly; the same (seed, round, candidates) give the same draw."""
    pool = sorted(candidates)
    if count >= len(pool):
        return pool
    rng = np.random.default_rng([seed, round_id])
    return sorted(pool[i] for i in rng.choice(len(pool), size=count, replace=False))
