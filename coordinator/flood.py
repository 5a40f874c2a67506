"""A log that a flood of one kind of message cannot flood."""

from __future__ import annotations

import logging
from collections import Counter


class FloodLog:
    """Logs the first ten messages of each key, then every power of two, with the count so far."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.counts: Counter[str] = Counter()

    def __call__(self, level: int, key: str, fmt: str, *args) -> None:
        n = self.counts[key] = self.counts[key] + 1
        if n <= 10 or n & (n - 1) == 0:
            self.logger.log(level, fmt + ("" if n <= 10 else f" [{n} of this kind so far]"), *args)
