"""Which selected devices answer a round only after it closed.

With over-selection a round asks more devices than it needs and closes on the first `wanted`
reports. Over MQTT, which reports come first is decided by thread timing, so two runs with
the same seed would aggregate different devices and drift apart, and an in-memory run could
not be compared with an MQTT one. The simulator therefore decides who is late: in each round,
`selected - wanted` of the selected devices, drawn from (seed, round), hold their answer until
the round has closed, on every transport. The coordinator is unchanged (it still takes the
first `wanted` reports); the simulated fleet just has reproducible stragglers, so the same
seed aggregates the same devices in memory and over a real broker.
"""

from __future__ import annotations

import threading

import numpy as np


def choose_stragglers(selected: tuple[str, ...], wanted: int, seed: int, round_id: int) -> frozenset[str]:
    """The `len(selected) - wanted` devices that answer late, the same for the same (seed, round)."""
    extra = len(selected) - wanted
    if extra <= 0:
        return frozenset()
    pool = sorted(selected)
    rng = np.random.default_rng([seed, round_id, 0x57A6])
    return frozenset(pool[i] for i in rng.choice(len(pool), size=extra, replace=False))


class StragglerPlan:
    """The stragglers of each round, shared by the coordinator's thread (which records a round
    as it begins and as it closes) and the device threads (which ask)."""

    def __init__(self, seed: int):
        self.seed = seed
        self._late: dict[int, frozenset[str]] = {}
        self._closed_through = 0  # every round up to this id has closed
        self._cond = threading.Condition()

    def begin(self, round_id: int, selected: tuple[str, ...], wanted: int) -> frozenset[str]:
        late = choose_stragglers(selected, wanted, self.seed, round_id)
        with self._cond:
            self._late[round_id] = late
            self._cond.notify_all()
        return late

    def closed(self, round_id: int) -> None:
        with self._cond:
            self._closed_through = max(self._closed_through, round_id)
            self._late.pop(round_id - 8, None)  # keep a few, for answers still on their way

    def is_late(self, round_id: int, device_id: str, timeout_s: float = 30.0) -> bool:
        """Whether device_id answers round_id late; waits for the round's plan (tasks can reach a
        device before the thread that began the round has recorded it)."""
        with self._cond:
            self._cond.wait_for(lambda: round_id in self._late or round_id <= self._closed_through, timeout_s)
            return device_id in self._late.get(round_id, ())

    def is_closed(self, round_id: int) -> bool:
        with self._cond:
            return round_id <= self._closed_through
