"""Who trains this round: reproducible from (seed, round) (a DP round's draw also from its
noise key: _keyed), with over-selection."""

from __future__ import annotations

import math

import numpy as np


def selection_size(wanted: int, over_selection: float, available: int) -> int:
    """Devices to ask so that `wanted` reports likely arrive (e.g. 1.3 = ask 30% more)."""
    return min(available, max(wanted, math.ceil(wanted * over_selection)))


def _keyed(entropy: list[int], key: str) -> list[int]:
    """A DP round's draw also from its noise key (dp/round.py, noise_rng): amplification by
    sampling holds only while the sample is secret, and (seed, round) alone is known to whoever
    knows the config. "" (no DP, or the simulator): (seed, round) as before."""
    return [*entropy, int(key, 16)] if key else entropy


def sample_devices(candidates: list[str], count: int, seed: int, round_id: int, key: str = "") -> list[str]:
    """`count` distinct devices drawn uniformly; the same (seed, round, candidates, key) give the same draw."""
    pool = sorted(candidates)
    if count >= len(pool):
        return pool
    rng = np.random.default_rng(_keyed([seed, round_id], key))
    return sorted(pool[i] for i in rng.choice(len(pool), size=count, replace=False))


def poisson_sample(candidates: list[str], rate: float, seed: int, round_id: int, key: str = "") -> list[str]:
    """Each candidate independently with probability `rate` (Poisson sampling, as DP-FedAvg's
    accountant models it: the cohort's size varies round to round, and may be 0: such a draw is
    not drawn again, the round releases its noise alone, noise_round.py). Reproducible from
    (seed, round, candidates, key)."""
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"the sampling rate must be in (0, 1], got {rate}")
    pool = sorted(candidates)
    # The trailing 0 once was a redraw's `attempt` (an empty draw is no longer drawn again); it
    # stays in the seed so that every draw is the one earlier versions made for (seed, round).
    rng = np.random.default_rng(_keyed([seed, round_id, 0x9015, 0], key))
    return [device for device, keep in zip(pool, rng.random(len(pool)) < rate) if keep]

