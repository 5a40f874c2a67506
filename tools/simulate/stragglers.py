"""Which selected devices answer a round late, and when they may answer.

With over-selection a round asks more devices than it needs and closes on the first `wanted`
reports. Over MQTT, which reports come first is decided by thread timing, so two runs with
the same seed would aggregate different devices and drift apart, and an in-memory run could
not be compared with an MQTT one. The simulator therefore decides who is late: in each round,
`selected - wanted` of the selected devices, drawn from (seed, round), train as the others do
but answer only after the on-time devices: once the round has closed, or once every on-time
device has answered or vanished without enough reports to close it (then the stragglers fill
in, as real ones would). The coordinator is unchanged (it still takes the first `wanted`
reports); the simulated fleet just has reproducible stragglers, so the same seed aggregates
the same devices in memory and over a real broker.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np


def choose_stragglers(selected: tuple[str, ...], wanted: int, seed: int, round_id: int) -> frozenset[str]:
    """The `len(selected) - wanted` devices that answer late, the same for the same (seed, round)."""
    extra = len(selected) - wanted
    if extra <= 0:
        return frozenset()
    pool = sorted(selected)
    rng = np.random.default_rng([seed, round_id, 0x57A6])
    return frozenset(pool[i] for i in rng.choice(len(pool), size=extra, replace=False))


@dataclass
class _Round:
    on_time: frozenset[str]
    late: frozenset[str]
    wanted: int
    answered: set[str] = field(default_factory=set)
    reports: int = 0
    closed: bool = False


class StragglerPlan:
    """The stragglers of each round, shared by the coordinator's thread (which records a round
    as it begins and as it closes) and the device threads (which report what they did, and ask
    whether a held answer may go)."""

    def __init__(self, seed: int):
        self.seed = seed
        self._rounds: dict[int, _Round] = {}
        self._gone: set[str] = set()  # vanished devices: they answer nothing until they are back
        self._cond = threading.Condition()

    def begin(self, round_id: int, selected: tuple[str, ...], wanted: int) -> frozenset[str]:
        late = choose_stragglers(selected, wanted, self.seed, round_id)
        with self._cond:
            self._rounds[round_id] = _Round(frozenset(selected) - late, late, wanted)
            self._rounds.pop(round_id - 8, None)  # keep a few, for answers still on their way
            self._cond.notify_all()
        return late

    def closed(self, round_id: int) -> None:
        with self._cond:
            for rid, rnd in self._rounds.items():
                rnd.closed = rnd.closed or rid <= round_id

    def is_late(self, round_id: int, device_id: str, timeout_s: float = 30.0) -> bool:
        """Whether device_id answers round_id late; waits for the round's plan (tasks can reach a
        device before the thread that began the round has recorded it)."""
        with self._cond:
            self._cond.wait_for(lambda: round_id in self._rounds, timeout_s)
            rnd = self._rounds.get(round_id)
            return rnd is not None and device_id in rnd.late

    def answered(self, round_id: int, device_id: str, reported: bool) -> None:
        """An on-time device sent its answer: an update (reported) or a decline."""
        with self._cond:
            rnd = self._rounds.get(round_id)
            if rnd is not None and device_id in rnd.on_time and device_id not in rnd.answered:
                rnd.answered.add(device_id)
                rnd.reports += int(reported)

    def gone(self, device_id: str) -> None:
        with self._cond:
            self._gone.add(device_id)

    def back(self, device_id: str) -> None:
        with self._cond:
            self._gone.discard(device_id)

    def may_answer(self, round_id: int) -> bool:
        """Whether a straggler of round_id may send its answer now."""
        with self._cond:
            rnd = self._rounds.get(round_id)
            if rnd is None or rnd.closed:
                return True
            done = all(d in rnd.answered or d in self._gone for d in rnd.on_time)
            return done and rnd.reports < rnd.wanted
