"""Time, in one place per side. Logic takes a Clock; only loops call sleep."""

from __future__ import annotations

import time


class SystemClock:
    def now(self) -> float:
        """Seconds, monotonic."""
        return time.monotonic()

    def wall(self) -> float:
        """Seconds since the epoch, for logs and records."""
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


class ManualClock:
    """A clock tests and simulations advance by hand."""

    def __init__(self, start: float = 0.0):
        self.t = start

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t

    def sleep(self, seconds: float) -> None:
        self.t += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.t += seconds
