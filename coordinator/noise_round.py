"""A Poisson round whose draw is empty: it releases noise alone and closes like any DP round.

The accountant's PoissonSampledDpEvent(q) models each eligible device drawn independently with
probability q, and the round releasing sum_{i in draw} clip(delta_i) + N(0, (zS)^2) whatever the
draw held, nothing included (DP-FedAvg, McMahan et al. 2018). Drawing again after an empty draw
conditions on a non-empty cohort: each device is then drawn with q / (1 - (1 - q)^n), not the q
charged (1 of 3 devices: 0.47, not 0.33). Skipping the round is no way out either: it publishes
that the draw was empty, which is not computed from the noised sum, and how likely that is,
(1 - q)^n, depends on whether one device is in the population. So the round runs: no task
leaves, the sum of nothing gets the round's noise (from (seed, round), as every DP round's),
divided by W as every round's, the strategy applies it and the round commits with its charge
(or is abandoned, still charged, when the model guard refuses it).

It is written as two store transactions (the round opened, then closed with its charge); a
restart that finds it open runs it again (NoiseRounds._noise_resumed): the same noise, one charge.
NoiseRounds is the part of server.Coordinator that runs these rounds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace

import numpy as np

from .dp.round import RoundPlan
from .guard import commit_fault
from .records import RoundRecord
from .rounds import SYNC, Limits, Phase, RoundMachine
from .stored import StoredRound

log = logging.getLogger("fedge.coordinator")


class NoiseRounds:
    """Mixed into server.Coordinator: begin_round, tick and the restart call these."""

    # Noise-only rounds' records until tick() returns them, oldest first: a second round can begin
    # before the next tick (the loop goes on after a transport error), and neither record is lost.
    _noise_closed: tuple[RoundRecord, ...] = ()

    def _noise_round(self, round_id: int, plan: RoundPlan) -> bool:
        """begin_round after an empty draw: the round runs and closes now; True (a round began)."""
        self._noise_closed += (noise_round(self, round_id, plan),)
        return True

    def _noise_record(self) -> RoundRecord | None:
        if not self._noise_closed:
            return None
        record, self._noise_closed = self._noise_closed[0], self._noise_closed[1:]
        return record

    def _noise_resumed(self, stored: StoredRound) -> bool:
        """True: the store's open round was a noise-only one (no device selected, a Poisson plan),
        stopped between its two writes, and is now run again and closed."""
        plan = RoundPlan.from_json(stored.privacy) if not stored.selected else None  # check_open read it
        if plan is None or plan.sampling != "poisson":
            return False
        self._noise_closed += (noise_round(self, stored.round_id, plan, reopened=True),)
        return True


def noise_round(c, round_id: int, plan: RoundPlan, reopened: bool = False) -> RoundRecord:
    """Run and close round `round_id` of coordinator `c` with no device; `reopened`: the store
    already holds it open (a restart)."""
    now, wall = c.clock.now(), c.clock.wall()
    log.warning("round %d: the Poisson draw (q=%.4g of %d devices) is empty: the round releases the noise "
                "alone, and is charged", round_id, plan.cohort / plan.population, plan.population)
    c.metrics.round_begun(round_id)  # as every round: fedge_round_id names it (and _close sets round_open 0)
    machine = RoundMachine(round_id, SYNC, (Limits(0, 0, 0.0),), (), now, phase=Phase.AGGREGATING,
                           why="empty Poisson draw: noise only")
    rnd = c._new_round(machine, {}, now, plan)
    if not reopened:
        c.store.open_round(StoredRound(round_id, c.state.version, (), {}, 0, 0, wall, wall,
                                       privacy=plan.to_json()))
    rnd.aggregator.sums = {k: np.zeros(np.shape(v), np.float64) for k, v in c.state.params.items()}  # sum of none
    state = c.strategy.apply(c.state, rnd.aggregate_input(len(c.registry)))  # DpMean: (0 + noise) / W
    state = replace(state, extra={**state.extra, **rnd.aggregator.carry()})
    fault = commit_fault(c.state, state, c.holdout)
    record = replace(rnd.record(fault is None, c.clock.now()), why=fault or machine.why)
    if fault is None:
        c.store.commit_round(round_id, state, asdict(record), c.clock.wall(), rnd.charge())
        c.state = state
    else:
        log.error("round %d: the new model is refused, the round abandoned: %s", round_id, fault)
        c.store.abandon_round(round_id, asdict(record), c.clock.wall(), rnd.charge())
    return c._close(record)
