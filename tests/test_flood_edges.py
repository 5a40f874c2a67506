"""Which occurrences a flood log writes (mutation7-kernel), against the rule in
edge_runtime/kernel/flood.py's docstring as a plain loop: the first ten of a kind, then every
power of two, each past the tenth with its count."""

from __future__ import annotations

import logging

from fedge.edge_runtime.kernel.flood import FloodLog, so_far, worth_logging


def test_the_first_ten_then_powers_of_two_are_logged():
    powers = {2**k for k in range(12)}
    expected = [n for n in range(1, 3000) if n <= 10 or n in powers]
    assert [n for n in range(1, 3000) if worth_logging(n)] == expected
    assert expected[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 16, 32]


def test_the_flood_log_says_the_count_once_lines_are_skipped(caplog):
    caplog.set_level(logging.INFO, logger="flood-test")
    log = FloodLog(logging.getLogger("flood-test"))
    for _ in range(20):
        log(logging.INFO, "k", "refused %s", "x")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused x"] * 10 + ["refused x [16 of this kind so far]"]
    assert so_far(10) == "" and so_far(11) == " [11 of this kind so far]"
