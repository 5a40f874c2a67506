"""The user picks the budget, the tool picks z: the smallest noise multiplier whose ε after
`rounds` identical rounds is at most the target, by dp-accounting's own calibration search."""

from __future__ import annotations

import dp_accounting as dpa
from dp_accounting import pld, rdp
from dp_accounting.mechanism_calibration import NoBracketIntervalFoundError

from fedge.edge_runtime.kernel.errors import ConfigError

from .accountant import RoundCharge, _quiet_absl, _relation, sensitivity_factor


def noise_multiplier_for(target_epsilon: float, delta: float, rounds: int, population: int, cohort: int,
                         sampling: str = "fixed", method: str = "rdp") -> float:
    """z such that `rounds` rounds of `cohort`-of-`population` sampling spend at most target_epsilon."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    RoundCharge(population, cohort, 1.0, sampling)  # validates the arguments
    relation = _relation(sampling)

    def fresh():
        return rdp.RdpAccountant(neighboring_relation=relation) if method == "rdp" else \
            pld.PLDAccountant(neighboring_relation=relation)

    def event(z: float) -> dpa.DpEvent:
        return dpa.SelfComposedDpEvent(RoundCharge(population, cohort, z, sampling).event(), rounds)

    def unsampled(z: float) -> dpa.DpEvent:  # accountant._unsampled_epsilon's bound, which epsilon() also takes
        return dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z / sensitivity_factor(sampling)), rounds)

    found, failure = [], None
    with _quiet_absl():
        for make in (event, unsampled) if sampling == "fixed" and method == "rdp" else (event,):
            try:  # each z meets the target under its own bound, so under the smaller of the two
                found.append(float(dpa.calibrate_dp_mechanism(fresh, make, target_epsilon, delta,
                                                              dpa.LowerEndpointAndGuess(0.05, 1.0), tol=1e-4)))
            except (ValueError, NoBracketIntervalFoundError) as exc:
                failure = exc
    if found:
        return min(found)
    # A target below what the bound can reach: dp-accounting 0.6's fixed-size RDP bound levels
    # off (0.135 for 50 rounds of 100 of 1,000 at delta 1e-10; the unsampled bound reaches it,
    # with rdp), so the search doubles z until its own float math fails ('math domain error'
    # near z = 2e8). Without this the service and `fedge simulate` died with that raw traceback.
    raise ConfigError(f"privacy: no noise multiplier makes {rounds} rounds of {cohort} of {population} devices "
                      f"({sampling}) spend at most target_epsilon {target_epsilon:g} at delta {delta:g} by "
                      f"dp-accounting's {method} bound ({failure}); raise target_epsilon or delta, or plan fewer "
                      "rounds")
