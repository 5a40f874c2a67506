"""The user picks the budget, the tool picks z: the smallest noise multiplier whose ε after
`rounds` identical rounds is at most the target, by dp-accounting's own calibration search,
under the bound the ledger will charge (accountant.epsilon).

Bounded for any config that loads. RDP's search is dp-accounting's, from z = MIN_CALIBRATED, for
at most MAX_CALIBRATED_ROUNDS rounds (config.py: its time grows with them, 43 s at 2**62); a
target that z already meets is refused by name (the search once doubled 30 times, then said
the target could not be reached).
PLD is where the time goes (measured with dp-accounting 0.6 on 2 shared cores, one evaluation,
delta 1e-5): it grows with the rounds composed, with q and as z falls (z = 0.5: q 0.01: 1e3 rounds
1.1 s, 1e5 4.4 s; q = 1: 100 rounds 3 s, 1e3 9.6 s / 860 MB, 1e4 23 s / 2.7 GB; z = 5, q 0.01,
1e7 rounds: 195 s), and the search dp-accounting runs from z = 0.05 evaluated PLD there and below
0.5 (10,000 devices, 100 a round, 100 rounds, ε 8: 236 s, and it returned z = 0.46, which the
ledger charges by RDP, as more than the target). So with pld: `rounds` is at most
PLD_MAX_ROUNDS (config.py) and delta at least PLD_MIN_DELTA; RDP's z comes first (an upper end:
RDP's bound is the looser); below PLD_MIN_NOISE it is the answer (RDP is charged there); else
PLD is searched between PLD_MIN_NOISE and z_rdp, in [max(PLD_MIN_NOISE, z_rdp / 2), z_rdp] first
(below z_rdp / 2 only when PLD meets the target there).
"""

from __future__ import annotations

import math

import dp_accounting as dpa
from dp_accounting import pld, rdp
from dp_accounting.mechanism_calibration import (
    ExplicitBracketInterval,
    LowerEndpointAndGuess,
    NoBracketIntervalFoundError,
)

from fedge.edge_runtime.kernel.errors import ConfigError

from .accountant import PLD_MIN_NOISE, RoundCharge, _quiet_absl, _relation, check_method, sensitivity_factor
from .config import check_pld, check_rounds

MIN_CALIBRATED = 0.05  # the search's lower end: a target met there is refused (_rdp_z)
TOL = 1e-4  # z within this of the smallest that meets the target


def noise_multiplier_for(target_epsilon: float, delta: float, rounds: int, population: int, cohort: int,
                         sampling: str = "fixed", method: str = "rdp") -> float:
    """z such that `rounds` rounds of `cohort`-of-`population` sampling spend at most target_epsilon."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    RoundCharge(population, cohort, 1.0, sampling)  # validates the arguments
    # Before the search: an unknown accountant was calibrated as rdp, and pld with fixed-size
    # sampling ran RDP's search and then died in dp-accounting (UnsupportedEventError).
    check_method(method, sampling)
    what = f"{rounds} rounds of {cohort} of {population} devices ({sampling})"
    if method == "pld":
        check_pld(rounds, delta)
    check_rounds(rounds)
    z = _rdp_z(target_epsilon, delta, rounds, population, cohort, sampling, what)
    if method != "pld" or z < PLD_MIN_NOISE:
        return z
    return _pld_z(target_epsilon, delta, rounds, RoundCharge(population, cohort, 1.0, sampling), z, what)


def _rdp_events(population: int, cohort: int, sampling: str, rounds: int):
    """The bounds the RDP ledger charges the smaller of (accountant.epsilon): the sampled event, and
    for fixed-size rounds also the same rounds as plain Gaussians."""
    def event(z: float) -> dpa.DpEvent:
        return dpa.SelfComposedDpEvent(RoundCharge(population, cohort, z, sampling).event(), rounds)

    def unsampled(z: float) -> dpa.DpEvent:  # accountant._unsampled_epsilon's bound
        return dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z / sensitivity_factor(sampling)), rounds)
    return (event, unsampled) if sampling == "fixed" else (event,)


def _epsilon(fresh, make, z: float, delta: float) -> float:
    """ε at z; inf where dp-accounting's float math fails (its fixed-size bound past z = 2e8)."""
    try:
        return float(fresh().compose(make(z)).get_epsilon(delta))
    except ValueError:
        return math.inf


def _rdp_z(target_epsilon, delta, rounds, population, cohort, sampling, what) -> float:
    def fresh():
        return rdp.RdpAccountant(neighboring_relation=_relation(sampling))

    makes = _rdp_events(population, cohort, sampling, rounds)
    found, failure = [], None
    with _quiet_absl():
        floor = min(_epsilon(fresh, make, MIN_CALIBRATED, delta) for make in makes)
        if floor <= target_epsilon:
            raise ConfigError(f"privacy: target_epsilon {target_epsilon:g} is met by {what} at delta {delta:g} already "
                              f"with noise multiplier {MIN_CALIBRATED:g} (ε {floor:.4g}), the least fedge calibrates: "
                              "such a target protects next to nothing; lower it, or set noise_multiplier")
        for make in makes:
            try:  # each z meets the target under its own bound, so under the smaller of the two
                found.append(float(dpa.calibrate_dp_mechanism(fresh, make, target_epsilon, delta,
                                                              LowerEndpointAndGuess(MIN_CALIBRATED, 1.0), tol=TOL)))
            except (ValueError, NoBracketIntervalFoundError) as exc:
                failure = exc
    if found:
        return min(found)
    # A target below what the bound can reach: dp-accounting 0.6's fixed-size RDP bound levels
    # off (0.135 for 50 rounds of 100 of 1,000 at delta 1e-10; the unsampled bound reaches it,
    # with rdp), so the search doubles z until its own float math fails ('math domain error'
    # near z = 2e8). Without this the service and `fedge simulate` died with that raw traceback.
    raise ConfigError(f"privacy: no noise multiplier makes {what} spend at most target_epsilon {target_epsilon:g} at "
                      f"delta {delta:g} by dp-accounting's rdp bound ({failure}); raise target_epsilon or delta, or "
                      "plan fewer rounds")


def _pld_z(target_epsilon, delta, rounds, charge: RoundCharge, upper: float, what) -> float:
    """PLD's z in [max(PLD_MIN_NOISE, upper / 2), upper], `upper` RDP's (module docstring)."""
    def fresh():
        return pld.PLDAccountant(neighboring_relation=_relation(charge.sampling))

    def make(z: float) -> dpa.DpEvent:
        return dpa.SelfComposedDpEvent(RoundCharge(charge.population, charge.cohort, z, charge.sampling).event(),
                                       rounds)
    with _quiet_absl():
        if not _epsilon(fresh, make, upper, delta) <= target_epsilon:
            # PLD above RDP's bound at RDP's z (its discretisation; infinite where delta is under the
            # tail mass it leaves, 1e-15 a round): the ledger charges PLD here, so search up from it
            try:  # evaluations above RDP's z, where PLD is cheapest; at most 30 doublings
                return float(dpa.calibrate_dp_mechanism(fresh, make, target_epsilon, delta,
                                                        LowerEndpointAndGuess(upper, 2 * upper), tol=TOL))
            except (ValueError, NoBracketIntervalFoundError) as exc:
                raise ConfigError(f"privacy: no noise multiplier makes {what} spend at most target_epsilon "
                                  f"{target_epsilon:g} at delta {delta:g} by dp-accounting's pld accountant ({exc}); "
                                  "raise delta (PLD leaves 1e-15 of each round's tail unbounded), or use accountant "
                                  "= 'rdp'") from None
        for lower in dict.fromkeys((max(PLD_MIN_NOISE, upper / 2), PLD_MIN_NOISE)):  # then: PLD's z under half RDP's
            if _epsilon(fresh, make, lower, delta) > target_epsilon:
                return float(dpa.calibrate_dp_mechanism(fresh, make, target_epsilon, delta,
                                                        ExplicitBracketInterval(lower, upper), tol=TOL))
            upper = lower
    return PLD_MIN_NOISE  # met there: below it the ledger charges RDP's bound, which needs RDP's z
