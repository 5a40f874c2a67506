"""fedge's ε and calibrated z against dp-accounting 0.6 called directly, on a grid of edges the
module tests do not use: q = 1 (every device asked), q tiny (1 of 10^6), z small (below PLD's
floor) and large, one round and many, δ from 1e-3 to 1e-10.

The oracle is tests/coordinator/test_dp.py's `_direct` (one compose per round, nothing of
fedge's) with the bound the accountant documents for fixed-size cohorts: the smaller of the
sampled and the plain Gaussian bound (`_direct_unsampled`); PLD below its noise floor is RDP's
bound. Calibration is checked without dp-accounting's search: the returned z meets the target
by the direct bound and z - 2·TOL does not (the least z, to the search's tolerance)."""

from __future__ import annotations

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from fedge.coordinator.dp.accountant import PLD_MIN_NOISE, RoundCharge, epsilon
from fedge.coordinator.dp.calibrate import TOL, noise_multiplier_for
from tests.coordinator.test_dp import _direct, _direct_unsampled


def _direct_rounds(sampling, population, cohort, z, rounds, delta, method):
    """test_dp's `_direct` (one compose per round) up to 20 rounds; past that one compose of
    `rounds` counts, the same dp-accounting call its count argument documents (a fixed-size
    compose costs about 1 s: 1,000 of them took over 10 minutes)."""
    if rounds <= 20:
        return _direct(sampling, population, cohort, z, rounds, delta, method)
    relation = dpa.NeighboringRelation.REPLACE_ONE if sampling == "fixed" else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    acc = rdp.RdpAccountant(neighboring_relation=relation) if method == "rdp" else pld.PLDAccountant(relation)
    if sampling == "fixed":  # replace-one: sensitivity 2S, so dp-accounting's multiplier is z / 2
        acc.compose(dpa.SampledWithoutReplacementDpEvent(population, cohort, dpa.GaussianDpEvent(z / 2)), rounds)
    else:
        acc.compose(dpa.PoissonSampledDpEvent(cohort / population, dpa.GaussianDpEvent(z)), rounds)
    return acc.get_epsilon(delta)


def _oracle(sampling, population, cohort, z, rounds, delta, method):
    if method == "pld" and z < PLD_MIN_NOISE:
        method = "rdp"  # documented fallback: RDP's (looser, valid) bound below PLD's floor
    sampled = _direct_rounds(sampling, population, cohort, z, rounds, delta, method)
    return min(sampled, _direct_unsampled(z, rounds, delta)) if sampling == "fixed" else sampled


GRID = [  # (population, cohort, z, rounds, delta)
    (50, 50, 1.0, 1, 1e-5),  # q = 1
    (50, 50, 0.6, 20, 1e-3),
    (1_000_000, 1, 0.8, 1, 1e-5),  # q = 1e-6
    (1_000_000, 1, 0.8, 1000, 1e-10),
    (1000, 100, 0.3, 1, 1e-5),  # z under PLD's floor
    (1000, 100, 50.0, 1, 1e-9),  # z large
    (10, 7, 4.0, 3, 1e-6),  # most of a small population
    (2, 1, 1.5, 1, 1e-3),
]


def _quick(sampling, method, population, cohort, z, rounds, delta) -> bool:
    """PLD over many rounds, or at q = 1 over several, takes 5-50 s; it is covered at one round."""
    return not (method == "pld" and (rounds > 20 or (rounds > 1 and cohort == population)) and z >= PLD_MIN_NOISE)


@pytest.mark.parametrize("sampling,method,population,cohort,z,rounds,delta", [
    (s, m, *case) for s, m in [("fixed", "rdp"), ("poisson", "rdp"), ("poisson", "pld")] for case in GRID
    if _quick(s, m, *case)])
def test_epsilon_on_the_edges_is_dp_accountings(sampling, method, population, cohort, z, rounds, delta):
    got = epsilon([RoundCharge(population, cohort, z, sampling)] * rounds, delta, method)
    assert got == pytest.approx(_oracle(sampling, population, cohort, z, rounds, delta, method), rel=1e-9, abs=1e-12)


def test_poisson_is_charged_add_remove_and_fixed_replace_one_at_half_the_noise():
    """The documented relations, by their consequence: at q = 1 a fixed-size round is the plain
    Gaussian at z / 2 (replace-one, sensitivity 2S) and a Poisson round the plain Gaussian at z."""
    z, delta = 2.0, 1e-5
    fixed = epsilon([RoundCharge(40, 40, z, "fixed")], delta)
    poisson = epsilon([RoundCharge(40, 40, z, "poisson")], delta)
    assert fixed == pytest.approx(_direct_unsampled(z, 1, delta), rel=1e-9)
    assert poisson == pytest.approx(_direct_unsampled(2 * z, 1, delta), rel=1e-9)  # z/2 at 2z is z
    assert fixed > poisson


# Fixed-size q = 1e-6 is left to the ε grid above: each fixed-size RDP evaluation costs about 1 s
# whatever q, and its calibration took 22 s.
@pytest.mark.parametrize("sampling,population,cohort,rounds,target,delta", [
    ("fixed", 50, 50, 1, 2.0, 1e-5),  # q = 1
    ("poisson", 50, 50, 1, 2.0, 1e-5),
    ("poisson", 1_000_000, 1, 1, 0.5, 1e-5),  # q tiny
    ("poisson", 1000, 100, 1, 30.0, 1e-3),  # small z
])
def test_calibrated_z_is_the_least_that_meets_the_target_by_the_direct_bound(sampling, population, cohort, rounds,
                                                                              target, delta):
    z = noise_multiplier_for(target, delta, rounds, population, cohort, sampling)
    assert _oracle(sampling, population, cohort, z, rounds, delta, "rdp") <= target
    assert _oracle(sampling, population, cohort, z - 2 * TOL, rounds, delta, "rdp") > target


@pytest.mark.parametrize("population,cohort,target", [(50, 50, 1.5), (1000, 10, 0.3)])
def test_pld_calibrated_z_is_the_least_that_meets_the_target_by_direct_pld(population, cohort, target):
    z = noise_multiplier_for(target, 1e-5, 1, population, cohort, "poisson", "pld")
    if z <= PLD_MIN_NOISE:
        pytest.fail(f"z {z} at PLD's floor: pick a case above it")
    assert _oracle("poisson", population, cohort, z, 1, 1e-5, "pld") <= target
    assert _oracle("poisson", population, cohort, z - 2 * TOL, 1, 1e-5, "pld") > target
