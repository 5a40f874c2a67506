"""why_waiting (coordinator/async_mode/waiting.py) against its rule written as a plain loop, found
blind by benchmarks/results/2026-12-06-mutation6-async (the log line was only seen in two fleet
tests): an open buffer can still fill while it is full, a device is training, or an eligible
device may still be asked (it gave fewer than `limit` updates and is not silent)."""

from __future__ import annotations

import itertools

from fedge.coordinator.async_mode.waiting import why_waiting


def _can_fill(buffered, k, eligible, in_flight, given, limit, silent) -> bool:
    if buffered >= k:
        return True
    for d in eligible:
        if d in in_flight:
            return True
        if given.get(d, 0) < limit and d not in silent:
            return True
    return False


def test_the_line_is_none_exactly_when_the_rule_says_the_buffer_can_fill():
    """Every state of two eligible devices: in flight or not, silent or not, 0 to limit + 1 given."""
    k, limit, seen = 4, 2, 0
    for buffered in (k - 1, k, k + 1):
        for flying, quiet, gives in itertools.product(
                itertools.product((False, True), repeat=2), itertools.product((False, True), repeat=2),
                itertools.product(range(limit + 2), repeat=2)):
            eligible = ["a", "b"]
            in_flight = {d for d, f in zip(eligible, flying) if f}
            silent = {d for d, q in zip(eligible, quiet) if q}
            given = dict(zip(eligible, gives))
            line = why_waiting(7, buffered, k, eligible, in_flight, given, limit, silent, 5, False)
            assert (line is None) == _can_fill(buffered, k, eligible, in_flight, given, limit, silent), (
                buffered, in_flight, silent, given, line)
            seen += line is not None
    assert seen > 0


def test_the_line_counts_who_gave_their_share_and_who_is_silent():
    """One device gave exactly its limit, one silent under it, one silent that gave its share too."""
    line = why_waiting(3, 2, 5, ["a", "b", "c"], set(), {"a": 2, "c": 2}, 2, {"b", "c"}, 4, True)
    assert line == ("buffer 3 waits with 2 of K = 5 updates: the 2 eligible devices gave 2 each, the most one "
                    "device may give one buffer under central DP: more devices, or a smaller buffer_size; "
                    "1 eligible device not heard from since its last task expired")
    assert why_waiting(3, 0, 5, [], set(), {}, 1, set(), 4, False) == (
        "buffer 3 waits with 0 of K = 5 updates: no device is eligible (4 registered; offline, parked or not eligible)")
