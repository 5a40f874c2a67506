"""Reconnect delays: exponential growth with jitter on every attempt (pure; the RNG is passed in).

A broker restart drops the whole fleet at one instant. If the first retry waited a fixed
min_s, every device would come back in the same millisecond, and again after each reset of
the attempt counter. So every delay, the first included, is a uniform draw between half the
base delay and the exponential cap: the fleet spreads over a window that grows with each
failed attempt, and no device retries in a tight loop (the floor).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    min_s: float = 0.5  # seconds; the cap of the first retry (it waits between min_s/2 and min_s)
    max_s: float = 30.0  # seconds; no retry waits longer
    factor: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.min_s <= self.max_s:
            raise ValueError(f"backoff needs 0 < min_s ({self.min_s}) <= max_s ({self.max_s})")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")

    def bounds(self, attempt: int) -> tuple[float, float]:
        """(shortest, longest) wait before retry number `attempt`, in seconds."""
        cap = min(self.max_s, self.min_s * self.factor ** min(attempt, 64))
        return self.min_s / 2, cap

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number `attempt` (0 = the first retry)."""
        return rng.uniform(*self.bounds(attempt))
