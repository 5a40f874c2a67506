"""Calibration of z stays bounded (coordinator/dp/calibrate.py): with accountant = "pld" the
search no longer runs PLD below PLD_MIN_NOISE (it took 236 s for 100 rounds of 100 of 10,000 and
returned a z the ledger then charges by RDP, over the target), too many rounds or too small a
delta for PLD are refused by name, and a target that the least calibrated z meets already is
named as that. Oracles: dp-accounting called directly (RDP and PLD), never timings."""

from __future__ import annotations

import dp_accounting as dpa
import pytest
from dp_accounting import pld, rdp

from fedge.coordinator.dp.accountant import PLD_MIN_NOISE, RoundCharge, epsilon
from fedge.coordinator.dp.calibrate import MIN_CALIBRATED, TOL, noise_multiplier_for
from fedge.coordinator.dp.config import MAX_CALIBRATED_ROUNDS, PLD_MAX_ROUNDS, PLD_MIN_DELTA, PrivacyConfig
from fedge.edge_runtime.kernel.errors import ConfigError

POISSON = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE


def _direct(method: str, q: float, z: float, rounds: int, delta: float) -> float:
    """Poisson rounds by hand, dp-accounting's compose(event, rounds) (one PLD compose per round
    takes minutes), nothing of fedge's."""
    acc = pld.PLDAccountant(POISSON) if method == "pld" else rdp.RdpAccountant(neighboring_relation=POISSON)
    return acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds).get_epsilon(delta)


def test_pld_calibration_stops_at_the_floor_where_the_ledger_switches_to_rdp():
    """ε 8 over 100 rounds of 100 of 10,000: PLD's own answer is under 0.5, where the ledger charges
    RDP's bound, which needs about 0.501. The smallest z the ledger charges within the target is
    the floor itself (PLD there), and the charge of the rounds at that z is within the target."""
    z = noise_multiplier_for(8.0, 1e-5, 100, 10_000, 100, "poisson", "pld")
    assert z == PLD_MIN_NOISE
    assert _direct("pld", 0.01, z, 100, 1e-5) <= 8.0 < _direct("rdp", 0.01, z - TOL, 100, 1e-5)
    assert epsilon([RoundCharge(10_000, 100, z, "poisson")] * 100, 1e-5, "pld") <= 8.0


def test_pld_calibration_above_the_floor_is_pld_s_smallest_z():
    z = noise_multiplier_for(1.0, 1e-5, 20, 10_000, 100, "poisson", "pld")
    assert z > PLD_MIN_NOISE
    assert _direct("pld", 0.01, z, 20, 1e-5) <= 1.0 < _direct("pld", 0.01, z - 2 * TOL, 20, 1e-5)
    assert z < noise_multiplier_for(1.0, 1e-5, 20, 10_000, 100, "poisson", "rdp")  # tighter than RDP's


def test_pld_refuses_more_rounds_or_a_smaller_delta_than_it_can_calibrate_by_name():
    with pytest.raises(ConfigError, match=f"rounds = {10 ** 7} to calibrate with accountant = 'pld'"):
        PrivacyConfig(enabled=True, accountant="pld", sampling="poisson", rounds=10 ** 7)
    assert PrivacyConfig(enabled=True, accountant="pld", sampling="poisson", rounds=10 ** 7,
                         noise_multiplier=1.0).rounds == 10 ** 7  # z set: nothing calibrated
    assert PrivacyConfig(enabled=True, sampling="poisson", rounds=MAX_CALIBRATED_ROUNDS).rounds  # rdp: a higher bound
    with pytest.raises(ConfigError, match=f"below {PLD_MIN_DELTA:g}"):
        PrivacyConfig(enabled=True, accountant="pld", sampling="poisson", noise_multiplier=1.0, delta=1e-15)
    with pytest.raises(ConfigError, match=f"below {PLD_MIN_DELTA:g}"):
        noise_multiplier_for(8.0, 1e-20, 100, 10_000, 100, "poisson", "pld")
    with pytest.raises(ConfigError, match=f"over {PLD_MAX_ROUNDS}"):
        noise_multiplier_for(8.0, 1e-5, PLD_MAX_ROUNDS + 1, 10_000, 100, "poisson", "pld")
    assert _direct("pld", 0.01, 1.0, 100, 1e-15) == float("inf")  # why: PLD cannot show that delta
    assert _direct("pld", 0.01, 1.0, 100, PLD_MIN_DELTA) < 10


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_a_target_the_least_calibrated_z_meets_already_is_named(sampling):
    """It was searched upward 30 times, then called unreachable ("no noise multiplier makes ...")."""
    assert _direct("rdp", 0.1, MIN_CALIBRATED, 100, 1e-5) <= 1e6
    with pytest.raises(ConfigError, match=f"1e\\+06 is met .* already with noise multiplier {MIN_CALIBRATED:g}"):
        noise_multiplier_for(1e6, 1e-5, 100, 1000, 100, sampling)


@pytest.mark.parametrize("sampling", ["poisson", "fixed"])
def test_more_rounds_than_fedge_calibrates_for_are_refused_by_name_with_the_bound(sampling):
    """privacy.rounds = 2**62 was taken, and the service calibrated z for that many rounds before
    it started (53 s on a loaded machine; 43 s here for fixed-size sampling, 11 s at 10**6)."""
    for rounds in (MAX_CALIBRATED_ROUNDS + 1, 2 ** 62):
        with pytest.raises(ConfigError, match=f"rounds = {rounds} .* over {MAX_CALIBRATED_ROUNDS:,}"):
            PrivacyConfig(enabled=True, sampling=sampling, rounds=rounds)
        with pytest.raises(ConfigError, match=f"over {MAX_CALIBRATED_ROUNDS:,}"):
            noise_multiplier_for(8.0, 1e-6, rounds, 10_000, 100, sampling)
    assert PrivacyConfig(enabled=True, sampling=sampling, rounds=MAX_CALIBRATED_ROUNDS).rounds == MAX_CALIBRATED_ROUNDS
    # nothing to calibrate: z is set, and the budget refuses the round that would pass the target
    assert PrivacyConfig(enabled=True, sampling=sampling, rounds=2 ** 62, noise_multiplier=1.0).rounds == 2 ** 62


@pytest.mark.parametrize("method,sampling,named", [("pld", "fixed", "Poisson sampling only"),
                                                   ("bogus", "poisson", "accountant 'bogus'")])
def test_calibration_refuses_what_the_ledger_refuses_by_name_before_searching(method, sampling, named):
    """epsilon() refuses an unknown accountant and PLD with fixed-size cohorts by name; the
    calibration did not: pld with fixed ran RDP's search, then raised dp-accounting's own
    UnsupportedEventError, and an unknown accountant was silently calibrated as rdp."""
    for call in (lambda: noise_multiplier_for(2.0, 1e-5, 1, 1000, 100, sampling, method),
                 lambda: epsilon([RoundCharge(1000, 100, 1.0, sampling)], 1e-5, method)):
        with pytest.raises(ValueError, match=named):
            call()
