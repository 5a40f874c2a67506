"""Logging that a flood of one kind of message cannot flood: the first ten of a kind, then
every power of two, each with the count so far. Shared by the coordinator (rejections, handler
faults) and the MQTT transport (refused chunks and publishes; failed connection attempts, which
log at doubling counts from the first)."""

from __future__ import annotations

import logging
from collections import Counter


def worth_logging(n: int) -> bool:
    """Whether the n-th occurrence (1-based) of a kind is logged."""
    return n <= 10 or n & (n - 1) == 0


def doubling(n: int) -> bool:
    """Whether the n-th occurrence (1-based) is logged when only the 1st, 2nd, 4th, 8th, ... are."""
    return n > 0 and n & (n - 1) == 0


def so_far(n: int, what: str = "of this kind") -> str:
    """The suffix that says how many there were, once lines start being skipped."""
    return f" [{n} {what} so far]" if n > 10 else ""


class FloodLog:
    """Counts messages by key and logs the ones `worth_logging` picks."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self.counts: Counter[str] = Counter()

    def __call__(self, level: int, key: str, fmt: str, *args) -> None:
        n = self.counts[key] = self.counts[key] + 1
        if worth_logging(n):
            self.logger.log(level, fmt + so_far(n), *args)
