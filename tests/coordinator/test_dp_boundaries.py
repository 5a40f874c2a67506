"""The privacy code at its documented boundaries (benchmarks/results/2026-12-06-mutation4-privacy:
the mutants that the tests did not see). Oracles: dp-accounting called directly, the formulas of
the module docstrings written out as plain arithmetic, and hand-computed cases exactly at each
boundary."""

from __future__ import annotations

import math
from types import SimpleNamespace

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import rdp
from prometheus_client import CollectorRegistry

from fedge.coordinator.aggregate import UpdateMeta
from fedge.coordinator.dp import calibrate, compose
from fedge.coordinator.dp.accountant import RoundCharge, epsilon
from fedge.coordinator.dp.budget import PrivacyBudget
from fedge.coordinator.dp.calibrate import MIN_CALIBRATED, noise_multiplier_for
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.mechanism import gaussian_noise
from fedge.coordinator.dp.round import DpMean, RoundPlan, next_clip
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.test_dp_compose import _direct

POISSON = dpa.NeighboringRelation.ADD_OR_REMOVE_ONE


def _poisson_epsilon(q: float, z: float, rounds: int, delta: float) -> float:
    """dp-accounting directly: `rounds` Poisson-sampled Gaussian rounds, RDP."""
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), rounds)
    return rdp.RdpAccountant(neighboring_relation=POISSON).compose(event).get_epsilon(delta)


def test_a_target_exactly_the_least_calibrated_zs_epsilon_is_refused_and_one_just_under_is_calibrated():
    """calibrate.py: a target that z = MIN_CALIBRATED meets (ε <= target) is refused by name; at the
    boundary itself ε equals the target, which z = 0.05 meets. Just under it, z is searched."""
    floor = _poisson_epsilon(0.1, MIN_CALIBRATED, 3, 1e-5)
    with pytest.raises(ConfigError, match="is met by 3 rounds"):
        noise_multiplier_for(floor, 1e-5, 3, 1000, 100, "poisson")
    z = noise_multiplier_for(floor * (1 - 1e-6), 1e-5, 3, 1000, 100, "poisson")
    assert z >= MIN_CALIBRATED and _poisson_epsilon(0.1, z, 3, 1e-5) <= floor * (1 - 1e-6)


def test_fixed_size_calibration_returns_the_smaller_z_of_its_two_bounds(monkeypatch):
    """Fixed-size rounds are charged the smaller ε of the sampled and the plain Gaussian bound, so
    the z that meets the target under either one meets it: the smaller of the two searches' z is
    the calibrated one (a larger one is noise for nothing). The searches are stubbed by the bound
    they calibrate (each takes seconds); the floor check still runs dp-accounting."""
    found = {dpa.SampledWithoutReplacementDpEvent: 3.0, dpa.GaussianDpEvent: 5.0}

    def search(fresh, make, target, delta, bracket, tol):
        return found[type(make(1.0).event)]

    monkeypatch.setattr(calibrate.dpa, "calibrate_dp_mechanism", search)
    assert noise_multiplier_for(2.0, 1e-5, 3, 1000, 100, "fixed") == min(found.values())
    found[dpa.GaussianDpEvent] = 2.5  # the plain bound's z the smaller one
    assert noise_multiplier_for(2.0, 1e-5, 3, 1000, 100, "fixed") == 2.5


def test_zero_noise_is_zeros_and_a_negative_stddev_is_refused():
    """mechanism.gaussian_noise's range is stddev >= 0 (its refusal says so): 0 gives exact zeros."""
    out = gaussian_noise({"w": (3, 2), "b": ()}, 0.0, np.random.default_rng(0))
    assert {k: v.tolist() for k, v in out.items()} == {"w": [[0.0] * 2] * 3, "b": 0.0}
    with pytest.raises(ValueError, match=">= 0"):
        gaussian_noise({"w": (1,)}, -1e-300, np.random.default_rng(0))


def _adaptive(clip: float) -> RoundPlan:
    return RoundPlan(1000, 4, 1.0, clip, 4, 1e-5, 8.0, 0.0, delta_noise_multiplier=1.2, count_stddev=2.0,
                     target_quantile=0.5, clip_lr=0.2)


def test_a_norm_exactly_s_is_within_the_clip_and_not_counted_as_clipped():
    """DpMean: `clipped` counts norms over S, adaptive clipping's bit counts norms <= S (round.py:
    "devices whose norm was within S"). (3, 4) has norm exactly 5 in floats."""
    agg = DpMean(_adaptive(5.0), lambda: np.random.default_rng(0))
    agg.add({"w": np.array([3.0, 4.0])}, UpdateMeta("at", 1.0))  # no reported norm: the decoded one
    agg.add({"w": np.array([0.0, 1.0])}, UpdateMeta("says", 1.0, reported_norm=5.0))
    agg.add({"w": np.array([3.0, 4.0 + 1e-12])}, UpdateMeta("over", 1.0))
    agg.add({"w": np.array([0.0, 1.0])}, UpdateMeta("says-over", 1.0, reported_norm=np.nextafter(5.0, 6.0)))
    assert (agg.clipped, agg.within, agg.count) == (1, 2, 4)


@pytest.mark.parametrize("centred,reports,clamped", [(-100.0, 4, -2.0), (100.0, 4, 2.0), (-1.5, 4, -1.5),
                                                     (-2.0, 4, -2.0), (0.25, 3, 0.25), (-7.0, 3, -1.5)])
def test_release_count_clamps_the_centred_count_to_what_the_reports_can_sum_to(centred, reports, clamped):
    """DpMean.release_count: sum_i (b_i - 1/2) lies in [-reports/2, reports/2]; a secure sum outside
    it (a device that sent any field value) is clamped to that range, at both ends, then S moves
    by S exp(-eta (clamped / W + 1/2 - gamma)) (Andrew et al. 2021, written out)."""
    agg = DpMean(_adaptive(1.0), lambda: np.random.default_rng(0))
    agg.release_count(centred, reports)
    assert agg.next_clip == pytest.approx(1.0 * np.exp(-0.2 * (clamped / 4 + 0.5 - 0.5)), rel=1e-12)
    assert agg.next_clip == next_clip(1.0, clamped / 4 + 0.5, 0.5, 0.2)


def test_a_plan_with_target_quantile_1_is_refused_as_a_state_file_fedge_did_not_write():
    """RoundPlan.from_json: 0 <= target_quantile < 1, as PrivacyConfig (gamma = 1 would drive S up
    without bound: every device is always within it). Exactly 1 is refused, just under is read."""
    good = _adaptive(1.0).to_json()
    assert RoundPlan.from_json({**good, "target_quantile": float(np.nextafter(1.0, 0.0))}) is not None
    with pytest.raises(ValueError, match="target_quantile < 1"):
        RoundPlan.from_json({**good, "target_quantile": 1.0})


def test_a_ledger_asked_after_a_longer_one_that_kept_exactly_its_runs_is_composed_once():
    """compose.composed keeps the accountant of all runs but the last. Asked [A, A, B] (the ledger
    with a proposed round B), it keeps (A, 2); asked [A, A] next (the ledger alone), the kept
    accountant holds every run already and must not be used and composed with (A, 2) again."""
    a, b = RoundCharge(1000, 40, 1.0, "poisson"), RoundCharge(1000, 40, 1.4, "poisson")
    compose.forget()
    assert epsilon([a, a, b], 1e-6) == pytest.approx(_direct([a, a, b], 1e-6, "rdp"), rel=1e-9)
    assert epsilon([a, a], 1e-6) == pytest.approx(_direct([a, a], 1e-6, "rdp"), rel=1e-9)


def _budget(ledger: list[dict] | None = None, **settings) -> PrivacyBudget:
    """A PrivacyBudget over a store that holds `ledger` (no charges by default)."""
    config = PrivacyConfig(**{"enabled": True, "noise_multiplier": 1.0, "target_epsilon": 100.0, **settings})
    store = SimpleNamespace(path="state.db", privacy_ledger=lambda: ledger or [])
    return PrivacyBudget(config, store, CollectorRegistry())


def test_an_open_round_whose_charge_takes_epsilon_exactly_to_the_target_resumes():
    """budget.check_open refuses an open round whose charge would take ε over the target; exactly
    at it is within (the check before each round allows ε <= target alike)."""
    plan = RoundPlan(1000, 100, 1.0, 1.0, 100, 1e-5, 8.0, 0.0, "poisson")
    at = epsilon([plan.charge()], 1e-5)
    stored = SimpleNamespace(round_id=3, privacy=plan.to_json())
    _budget(sampling="poisson", delta=1e-5, target_epsilon=at).check_open(stored)  # no refusal
    with pytest.raises(ConfigError, match="when charged, over privacy.target_epsilon"):
        _budget(sampling="poisson", delta=1e-5, target_epsilon=at * (1 - 1e-9)).check_open(stored)


@pytest.mark.parametrize("expected,count_stddev", [(10, 1.0), (19, 1.0), (40, 2.0), (100, 5.0)])
def test_the_default_count_noise_is_the_larger_of_w_over_20_and_z(expected, count_stddev):
    """budget.plan with adaptive clipping and no clip_count_stddev: sigma_b = max(W / 20, z), so
    that 2 sigma_b > z always holds (split_noise); W / 20 alone refused every cohort under 40 at z = 1."""
    plan = _budget(target_quantile=0.5, clip_lr=0.2).plan(1, 1000, expected, expected)
    assert plan.count_stddev == count_stddev
    assert plan.delta_noise_multiplier == pytest.approx((1.0 - (2 * count_stddev) ** -2) ** -0.5, rel=1e-12)


def test_delta_exactly_one_over_the_population_is_warned_about(caplog):
    """budget._warn_once: delta >= 1 / population allows naming one device outright; 1e-3 x 1,000
    is exactly 1 in floats."""
    assert 1e-3 * 1000 == 1.0
    with caplog.at_level("WARNING", logger="fedge.coordinator.privacy"):
        _budget(delta=1e-3).plan(1, 1000, 10, 10)
        assert "delta = 0.001 is at least 1 / 1000" in caplog.text
        caplog.clear()
        _budget(delta=1e-3).plan(1, 999, 10, 10)
    assert "is at least 1 /" not in caplog.text


def test_a_calibrated_z_is_read_back_from_the_ledgers_first_charge():
    """budget.noise_multiplier with noise_multiplier = 0: z was calibrated once, at the first round,
    and is read back from the ledger's first charge, whatever later rows hold (a ledger written
    under another setting since)."""
    rows = [RoundPlan(1000, 100, z, 1.0, 100, 1e-6, 100.0, 1.0).to_json() for z in (1.3, 2.0)]
    assert _budget(rows, noise_multiplier=0.0, rounds=10).noise_multiplier(1000, 100) == 1.3


@pytest.mark.parametrize("z,d,n,m", [(0.5, 1, 20, 8), (0.3, 4, 20, 8), (1.0, 16, 5, 6)])
def test_the_count_coordinate_is_one_more_noised_coordinate_in_tau(z, d, n, m):
    """dp/distributed.params_for with adaptive clipping: tau d counts every coordinate that carries
    noise, the count coordinate too (d + 1). At small fields tau is not negligible (sigma near 1),
    and z_eff over d coordinates was larger than over the d + 1 sent. Kairouz et al. 2021, Thm. 2
    by a plain loop: rho = (Delta^2 + (kappa/2)^2) / (2 n sigma^2) + tau (d + 1)."""
    from fedge.coordinator.dp.distributed import params_for
    p = params_for(z, 1.0, 0.5, d, n, n, m, count_stddev=1.0)
    tau = sum(10 * math.exp(-2 * math.pi ** 2 * p.sigma ** 2 * j / (j + 1)) for j in range(1, n))
    rho = (p.rounded_bound ** 2 + (p.count_scale / 2) ** 2) / (2 * n * p.sigma ** 2) + tau * (d + 1)
    assert tau * (d + 1) > 1e-6 * rho  # where it matters
    assert p.noise_multiplier == pytest.approx((2 * rho) ** -0.5, rel=1e-12)
