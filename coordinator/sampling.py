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


def poisson_sample(candidates: list[str], rate: float, seed: int, round_id: int) -> list[str]:
    """Each candidate independently with probability `rate` (Poisson sampling, as DP-FedAvg's
    accountant models it: the cohort's size varies round to round, and may be 0: such a draw is
    not drawn again, the round releases its noise alone, noise_round.py). Reproducible from
    (seed, round, candidates)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"the sampling rate must be in (0, 1], got {rate}")
    pool = sorted(candidates)
    # The trailing 0 once was a redraw's `attempt` (an empty draw is no longer drawn again); it
    # stays in the seed so that every draw is the one earlier versions made for (seed, round).
    rng = np.random.default_rng([seed, round_id, 0x9015, 0])
    return [device for device, keep in zip(pool, rng.random(len(pool)) < rate) if keep]

