"""DP-FedAvg in the coordinator's rounds: the round's plan and its aggregator.

    RoundPlan           one round's mechanism and charge, fixed before its first task leaves and
                        stored with the open round, so a restart replays the same noise
    DpMean              the aggregator: clip each decoded delta to S (never reject), sum, add
                        N(0, (zS)^2) drawn from (seed, round), divide by the expected cohort

Which aggregators and settings privacy refuses, and why: dp/config.py (check_coordinator).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .accountant import RoundCharge
from .mechanism import clip_to_norm, global_norm, noised_mean

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class RoundPlan:
    """One DP round: the sampling event the accountant charges and the mechanism the aggregator runs."""

    population: int  # eligible devices when the round began
    cohort: int  # devices asked, over-selection included
    noise_multiplier: float  # z
    clip_norm: float  # S
    expected_cohort: int  # W: the reports the round wants (the fixed denominator)
    delta: float
    target_epsilon: float
    epsilon_after: float  # the ledger's ε with this round charged, by `accountant`
    sampling: str = "fixed"
    accountant: str = "rdp"

    def charge(self) -> RoundCharge:
        return RoundCharge(self.population, self.cohort, self.noise_multiplier, self.sampling)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> RoundPlan | None:
        return None if data is None else cls(**data)


class DpMean:
    """The DP-FedAvg aggregator of one round (module docstring). Its state is a function of the
    `add` calls alone and its noise comes from `rng()` (seeded by (seed, round)), so a replay
    after a restart rebuilds the same sum and draws the same noise: the released aggregate is
    bit-identical, and is charged once."""

    def __init__(self, plan: RoundPlan, rng: Callable[[], np.random.Generator]):
        self.plan = plan
        self._rng = rng
        self.sums: Params = {}
        self.count = 0
        self.clipped = 0  # updates whose decoded norm exceeded S (quantization, or a device that did not clip)
        self.max_norm = 0.0  # the largest norm after the coordinator's clip: <= S
        self.released = False  # result() ran: the noised aggregate exists and the round is charged

    def add(self, delta: Params, meta) -> None:
        bounded, norm = clip_to_norm(delta, self.plan.clip_norm)
        self.clipped += int(norm > self.plan.clip_norm)
        self.max_norm = max(self.max_norm, global_norm(bounded))
        for name, value in bounded.items():
            if name in self.sums:
                self.sums[name] += value
            else:
                self.sums[name] = np.array(value, np.float64)
        self.count += 1

    def result(self) -> Params:
        if self.count == 0:
            raise ValueError("no contributions to average")
        self.released = True
        p = self.plan
        return noised_mean(self.sums, p.noise_multiplier, p.clip_norm, p.expected_cohort, self._rng())
