"""DP-FedAvg's pure parts against independent references: dp-accounting called directly, a
statistical test of the noise, and the clip's invariant."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import pld, rdp

from fedge.coordinator.dp.accountant import RoundCharge, check_round, epsilon, rounds_left
from fedge.coordinator.dp.calibrate import noise_multiplier_for
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.mechanism import clip_to_norm, global_norm, noised_mean
from fedge.edge_runtime.kernel.errors import ConfigError


def _direct(sampling, population, cohort, z, rounds, delta, method="rdp"):
    """dp-accounting by hand: one compose per round, nothing of fedge's."""
    relation = dpa.NeighboringRelation.REPLACE_ONE if sampling == "fixed" else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    acc = rdp.RdpAccountant(neighboring_relation=relation) if method == "rdp" else pld.PLDAccountant(relation)
    for _ in range(rounds):
        if sampling == "fixed":
            # Replace-one: one device's clipped update swapped for another's moves the sum by up to 2S, and
            # dp-accounting's multiplier is noise over that sensitivity, so fedge's z (noise over S) halves.
            acc.compose(dpa.SampledWithoutReplacementDpEvent(population, cohort, dpa.GaussianDpEvent(z / 2)))
        else:
            acc.compose(dpa.PoissonSampledDpEvent(cohort / population, dpa.GaussianDpEvent(z)))
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("sampling,population,cohort,z,rounds,method", [
    ("poisson", 1000, 100, 1.0, 5, "rdp"), ("fixed", 1000, 100, 1.0, 3, "rdp"), ("fixed", 500, 13, 0.8, 20, "rdp"),
    ("poisson", 10_000, 130, 1.3, 50, "rdp"), ("poisson", 1000, 100, 1.0, 5, "pld"),
    ("poisson", 10_000, 130, 1.3, 20, "pld")])
def test_epsilon_matches_dp_accounting_directly(sampling, population, cohort, z, rounds, method):
    charges = [RoundCharge(population, cohort, z, sampling)] * rounds
    assert epsilon(charges, 1e-5, method) == pytest.approx(_direct(sampling, population, cohort, z, rounds, 1e-5,
                                                                    method), abs=1e-6)


def test_a_ledger_of_unequal_rounds_composes_each():
    a, b = RoundCharge(1000, 100, 1.0), RoundCharge(800, 130, 1.2)
    relation = dpa.NeighboringRelation.REPLACE_ONE
    acc = rdp.RdpAccountant(neighboring_relation=relation)
    for c in (a, a, b, a):
        gaussian = dpa.GaussianDpEvent(c.noise_multiplier / 2)  # replace-one: sensitivity 2S (_direct)
        acc.compose(dpa.SampledWithoutReplacementDpEvent(c.population, c.cohort, gaussian))
    assert epsilon([a, a, b, a], 1e-5) == pytest.approx(acc.get_epsilon(1e-5), abs=1e-6)
    assert epsilon([], 1e-5) == 0.0


@pytest.mark.parametrize("sampling", ["fixed", "poisson"])
def test_rounds_with_the_same_z_but_another_population_or_cohort_compose_each(sampling):
    """z is fixed for a job while the eligible population and the cohort drift: each round is
    still its own sampling event (a ledger that merged rounds by z alone charged the first
    round's sampling rate for all of them)."""
    ledger = [RoundCharge(1000, 100, 1.0, sampling), RoundCharge(1000, 400, 1.0, sampling),
              RoundCharge(200, 100, 1.0, sampling), RoundCharge(1000, 100, 1.0, sampling)]
    relation = dpa.NeighboringRelation.REPLACE_ONE if sampling == "fixed" else dpa.NeighboringRelation.ADD_OR_REMOVE_ONE
    acc = rdp.RdpAccountant(neighboring_relation=relation)
    plain = rdp.RdpAccountant(neighboring_relation=relation)
    for c in ledger:  # one compose per round, as _direct does
        if sampling == "fixed":
            acc.compose(dpa.SampledWithoutReplacementDpEvent(c.population, c.cohort, dpa.GaussianDpEvent(0.5)))
        else:
            acc.compose(dpa.PoissonSampledDpEvent(c.cohort / c.population, dpa.GaussianDpEvent(1.0)))
        plain.compose(dpa.GaussianDpEvent(0.5))
    expected = acc.get_epsilon(1e-5)
    if sampling == "fixed":  # a fixed-size round is charged the smaller of its two valid bounds (accountant.py)
        expected = min(expected, plain.get_epsilon(1e-5))
    assert epsilon(ledger, 1e-5) == pytest.approx(expected, abs=1e-6)


def _first_refused(sampling, population, cohort, z, target, delta):
    """The first round whose ε exceeds the target, from dp-accounting alone."""
    r = 1
    while _direct(sampling, population, cohort, z, r, delta) <= target:
        r += 1
    return r


@pytest.mark.parametrize("sampling,population,cohort", [("poisson", 1000, 100), ("fixed", 1000, 100),
                                                        ("fixed", 1000, 130)])
def test_the_first_round_over_budget_is_refused(sampling, population, cohort):
    refused = _first_refused(sampling, population, cohort, 1.0, 3.0, 1e-5)
    charge = RoundCharge(population, cohort, 1.0, sampling)
    ledger = []
    for _ in range(refused):
        verdict = check_round(ledger, charge, 3.0, 1e-5)
        if not verdict.allowed:
            break
        ledger.append(charge)
    assert len(ledger) + 1 == refused and not verdict.allowed and verdict.epsilon_after > 3.0 >= verdict.epsilon_spent
    assert "privacy budget" in verdict.why
    assert rounds_left([], charge, 3.0, 1e-5) == refused - 1


def test_over_selection_costs_privacy():
    """The devices asked count, not the reports: asking 130 for 100 reports spends more."""
    assert epsilon([RoundCharge(1000, 130, 1.0)] * 5, 1e-5) > epsilon([RoundCharge(1000, 100, 1.0)] * 5, 1e-5)


@pytest.mark.slow  # a binary search over z, each step a full RDP composition (about 35 s)
def test_calibrated_noise_spends_at_most_the_target_and_barely_less():
    z = noise_multiplier_for(4.0, 1e-6, rounds=50, population=1000, cohort=100)
    assert _direct("fixed", 1000, 100, z, 50, 1e-6) <= 4.0
    assert _direct("fixed", 1000, 100, z * 0.99, 50, 1e-6) > 4.0 * 0.98  # not wastefully noisy


def test_noise_has_the_calibrated_standard_deviation():
    """Σ + N(0, (zS)^2) over many draws: the sample variance of (noised_mean * W - Σ) is (zS)^2
    within a chi-square 99.99% interval (n = 200,000 coordinates: relative half-width ~ 4.4 / sqrt(n/2))."""
    rng = np.random.default_rng(7)
    z, s, w = 1.3, 0.5, 40.0
    clipped_sum = {"a": rng.normal(size=(500, 200)), "b": rng.normal(size=(200,))}
    out = noised_mean(clipped_sum, z, s, w, np.random.default_rng(11))
    residual = np.concatenate([(out[k].astype(np.float64) * w - clipped_sum[k]).ravel() for k in clipped_sum])
    n = residual.size
    var = float(np.mean(residual ** 2))
    assert abs(float(np.mean(residual))) < 4.5 * z * s / math.sqrt(n)
    # float32 rounding of the mean adds ~1e-7 relative error: far inside the bound.
    assert abs(var / (z * s) ** 2 - 1) < 4.5 * math.sqrt(2 / n)


def test_noise_bound_would_catch_a_wrong_stddev():
    """The same check refuses noise 3% off: the test above can fail."""
    rng = np.random.default_rng(3)
    residual = rng.normal(0, 1.03 * 0.65, size=200_700)
    assert abs(float(np.mean(residual ** 2)) / 0.65 ** 2 - 1) > 4.5 * math.sqrt(2 / residual.size)


@pytest.mark.parametrize("seed", range(20))
def test_clip_bounds_every_delta_and_keeps_direction(seed):
    rng = np.random.default_rng(seed)
    delta = {"w": rng.normal(size=(30, 7)) * rng.uniform(0.01, 10), "b": rng.normal(size=7)}
    bound = float(rng.uniform(0.1, 5))
    clipped, before = clip_to_norm(delta, bound)
    assert global_norm(clipped) <= bound * (1 + 1e-9)
    assert before == pytest.approx(global_norm(delta))
    scale = min(1.0, bound / before)
    for k in delta:
        np.testing.assert_allclose(clipped[k], delta[k] * scale, rtol=1e-12)


def test_privacy_config_validates_itself():
    assert PrivacyConfig().delta == 1e-6 and not PrivacyConfig().enabled
    for bad in ({"delta": 0}, {"target_epsilon": -1}, {"clip_norm": 0}, {"sampling": "uniform"},
                {"enabled": True}, {"on_exhausted": "ignore"}, {"noise_multiplier": float("nan")}):
        with pytest.raises(ConfigError):
            PrivacyConfig(**bad)
    assert PrivacyConfig(enabled=True, rounds=10).rounds == 10


def test_pld_refuses_fixed_size_sampling_by_name():
    with pytest.raises(ValueError, match="Poisson"):
        epsilon([RoundCharge(1000, 100, 1.0, "fixed")], 1e-5, "pld")


def _direct_unsampled(z, rounds, delta):
    """The same rounds as plain Gaussians (replace-one, sensitivity 2S), by hand."""
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    for _ in range(rounds):
        acc.compose(dpa.GaussianDpEvent(z / 2))
    return acc.get_epsilon(delta)


def test_fixed_size_rounds_are_charged_the_smaller_of_the_sampled_and_the_plain_gaussian_bound():
    """dp-accounting 0.6's fixed-size RDP bound levels off at large z (7 of 10 devices, one round,
    δ 1e-6: 0.236 at z = 100, 0.224 at z = 1e3) and at 0.135 for 50 rounds of 100 of 1,000 at
    δ = 1e-10, above the plain Gaussian's, which is also a valid bound for a fixed-size round.
    fedge charges the smaller: oracles are the two dp-accounting computations by hand. Where
    sampling helps (the usual case) nothing changes."""
    for z in (100.0, 1e3):
        sampled, plain = _direct("fixed", 10, 7, z, 1, 1e-6), _direct_unsampled(z, 1, 1e-6)
        assert plain < sampled and epsilon([RoundCharge(10, 7, z)], 1e-6) == pytest.approx(plain, rel=1e-12)
    usual = [RoundCharge(1000, 100, 1.0)] * 50
    assert epsilon(usual, 1e-5) == pytest.approx(_direct("fixed", 1000, 100, 1.0, 50, 1e-5), rel=1e-12)
    # 5 rounds at ε 0.1 and δ 1e-10 once had no z (the sampled bound levels off); the plain one
    # reaches it, and calibration finds the z that meets it under that bound.
    z = noise_multiplier_for(0.1, 1e-10, 5, 1000, 100)
    assert _direct_unsampled(z, 5, 1e-10) <= 0.1 < _direct_unsampled(z * 0.99, 5, 1e-10)
    assert _direct("fixed", 1000, 100, z, 5, 1e-10) > 0.1  # the sampled bound alone would refuse it


def test_a_target_no_bound_can_reach_is_refused_by_name():
    """The search for a z once doubled into a raw ValueError('math domain error') that killed
    the service and `fedge simulate`. A target below what RDP can show at this δ is a
    ConfigError that names it."""
    with pytest.raises(ConfigError, match="target_epsilon 0.001"):
        noise_multiplier_for(0.001, 1e-10, 5, 1000, 100)


def test_a_noise_multiplier_past_dp_accountings_float_range_is_refused_by_name():
    assert epsilon([RoundCharge(1000, 100, 1e8)], 1e-6) < 1e-3  # still within its range
    with pytest.raises(ConfigError, match="noise_multiplier 1e\\+09"):
        epsilon([RoundCharge(1000, 100, 1e9)], 1e-6)


def test_a_clipped_sum_counts_as_the_add_calls_it_stands_for():
    """DpMean.add_clipped_sum (a sharded round's workers clip and sum): `count` deltas already
    clipped and summed leave what `count` add calls leave, the count included (a sharded
    round's participants, SCAFFOLD's |S|, are read from it), and the same seeded noise gives the
    same release."""
    from fedge.coordinator.aggregate import AggregatorContext, UpdateMeta
    from fedge.coordinator.dp.round import DpMean, RoundPlan

    plan = RoundPlan(100, 10, 1.0, 0.5, 10, 1e-5, 8.0, 0.1)
    rng = np.random.default_rng(4)
    deltas = [{"w": rng.normal(size=(3, 2)), "b": rng.normal(size=(2,))} for _ in range(5)]
    ctx = AggregatorContext(round_id=3, seed=9)  # rng() is the same seeded stream each call
    one, summed = DpMean(plan, ctx.rng), DpMean(plan, ctx.rng)
    for d in deltas:
        one.add(d, UpdateMeta("d", 1.0))
    clipped = [clip_to_norm(d, 0.5)[0] for d in deltas]
    summed.add_clipped_sum({k: sum(c[k] for c in clipped[:2]) for k in ("w", "b")}, 2)
    summed.add_clipped_sum({k: sum(c[k] for c in clipped[2:]) for k in ("w", "b")}, 3)
    assert summed.count == one.count == 5
    released, expected = summed.result(), one.result()
    for k in expected:
        np.testing.assert_allclose(released[k], expected[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fit", [0, 1, 2, 3, 7, 8, 9, 63, 64, 65, 99, 100])
def test_rounds_left_is_the_largest_count_that_fits_by_a_plain_scan(monkeypatch, fit):
    """The binary search of rounds_left against a plain scan, on a budget where exactly `fit`
    more rounds fit (epsilon stubbed as the ledger's length: monotone, as every accountant is),
    at and around the powers of two where the doubling phase turns, and at the limit."""
    import fedge.coordinator.dp.accountant as accountant

    monkeypatch.setattr(accountant, "epsilon", lambda ledger, delta, method: float(len(ledger)))
    charge = RoundCharge(1000, 100, 1.0, "poisson")
    for spent in (0, 2):
        ledger, target = [charge] * spent, float(spent + fit)
        scan = next(k for k in range(1000) if accountant.epsilon([*ledger, *[charge] * (k + 1)], 0, "") > target)
        assert rounds_left(ledger, charge, target, 1e-5, limit=100) == min(scan, 100) == fit
    assert rounds_left([charge] * 3, charge, 2.0, 1e-5) == 0  # already over: nothing fits
