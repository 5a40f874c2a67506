"""Reconnect delays: exponential growth with full jitter (pure; the RNG is passed in).

Full jitter (a uniform draw between the floor and the exponential cap) spreads a fleet that
lost its broker at the same instant, so a thousand devices do not reconnect in lockstep.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    min_s: float = 0.5  # seconds; the first retry waits at least this
    max_s: float = 30.0  # seconds; no retry waits longer
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < min_s ({self.min_s}) <= max_s ({self.max_s})")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (0 = the first retry)."""
        cap = min(self.max_s, self.min_s * self.factor ** min(attempt, 64))
        return rng.uniform(self.min_s, cap)
