"""One round as a state machine without I/O.

    training --enough reports--------------------> aggregating -> committed
        |----deadline, reports >= quorum---------> aggregating -> committed
        |----deadline, or quorum out of reach----> abandoned

The machine counts; the service that owns it validates updates, feeds the accepted ones in,
and does the aggregation when the machine says `aggregate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Phase(str, Enum):
    TRAINING = "training"
    AGGREGATING = "aggregating"
    COMMITTED = "committed"
    ABANDONED = "abandoned"


@dataclass
class RoundMachine:
    round_id: int
    selected: tuple[str, ...]
    target: int  # reports that close the round early
    quorum: int  # minimum reports to commit at the deadline
    deadline: float  # clock seconds
    phase: Phase = Phase.TRAINING
    reported: list[str] = field(default_factory=list)
    declined: dict[str, str] = field(default_factory=dict)  # device -> reason
    why: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.quorum <= self.target <= len(self.selected):
            raise ValueError(f"need 1 <= quorum ({self.quorum}) <= target ({self.target}) <= selected ({len(self.selected)})")

    @property
    def outstanding(self) -> int:
        return len(self.selected) - len(self.reported) - len(self.declined)

    def expects(self, device_id: str) -> bool:
        return (
            self.phase == Phase.TRAINING
            and device_id in self.selected
            and device_id not in self.reported
            and device_id not in self.declined
        )

    def on_report(self, device_id: str) -> Phase:
        if not self.expects(device_id):
            raise ValueError(f"round {self.round_id} does not expect a report from {device_id}")
        self.reported.append(device_id)
        if len(self.reported) >= self.target:
            self._to(Phase.AGGREGATING, f"{len(self.reported)} reports")
        return self.phase

    def on_decline(self, device_id: str, reason: str) -> Phase:
        if self.expects(device_id):
            self.declined[device_id] = reason
            self._check_reachable()
        return self.phase

    def on_tick(self, now: float) -> Phase:
        if self.phase == Phase.TRAINING and now >= self.deadline:
            if len(self.reported) >= self.quorum:
                self._to(Phase.AGGREGATING, f"deadline with {len(self.reported)} reports")
            else:
                self._to(Phase.ABANDONED, f"deadline with {len(self.reported)} < quorum {self.quorum} reports")
        return self.phase

    def committed(self) -> None:
        if self.phase != Phase.AGGREGATING:
            raise ValueError(f"cannot commit a round in phase {self.phase.value}")
        self.phase = Phase.COMMITTED

    def abandon(self, why: str) -> None:
        self._to(Phase.ABANDONED, why)

    def _check_reachable(self) -> None:
        if self.phase != Phase.TRAINING:
            return
        possible = len(self.reported) + self.outstanding
        if possible < self.quorum:
            self._to(Phase.ABANDONED, f"quorum {self.quorum} out of reach ({len(self.declined)} declined)")
        elif self.outstanding == 0 and len(self.reported) >= self.quorum:
            self._to(Phase.AGGREGATING, f"all answered, {len(self.reported)} reports")

    def _to(self, phase: Phase, why: str) -> None:
        self.phase = phase
        self.why = why
