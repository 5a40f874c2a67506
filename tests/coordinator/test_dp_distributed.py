"""Distributed DP under secure aggregation (coordinator/dp/distributed.py, secagg/private.py):
the accounting against dp-accounting called directly with the noise multiplier a plain loop of
the paper's formula gives, the budget's refusal, the config rules, and a real secure round over
the in-memory broker whose committed model is the decoded noised sum, charged as distributed."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import rdp

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.accountant import RoundCharge, epsilon
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.distributed import WRAP_LOG2, params_for
from fedge.coordinator.secagg.config import SecAggConfig, SecureAggregationConflict
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.secagg import ddg
from fedge.edge_runtime.kernel.secagg.messages import MaskedInput, SecAggSpec, SecAggTask
from fedge.edge_runtime.kernel.secagg.packing import unpack
from tests.coordinator.fleet import copy_params, make_fleet
from tests.tiny_model import build_tiny_model


def _paper_z_eff(sigma, n, scaled_norm, d, beta=0.6065306597126334):  # e^-0.5
    """Kairouz et al. 2021, Thm. 1 and 2 written out: the L2 sensitivity after conditional
    rounding, tau by a plain loop, rho = Delta^2 / (2 n sigma^2) + tau d, z_eff = (2 rho)^-1/2."""
    a = scaled_norm
    delta2 = min(math.sqrt(a * a + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (a + math.sqrt(d) / 2)),
                 a + math.sqrt(d))
    tau = 0.0
    for k in range(1, n):
        tau += 10 * math.exp(-2 * math.pi ** 2 * sigma ** 2 * k / (k + 1))
    return 1 / math.sqrt(delta2 ** 2 / (n * sigma ** 2) + 2 * tau * d)


@pytest.mark.parametrize("z,d,n_min,n_max,m", [(1.0, 610, 80, 100, 16), (0.7, 100_000, 70, 130, 16),
                                                (2.5, 5000, 10, 13, 12), (1.2, 64, 2, 3, 10)])
def test_the_charge_matches_dp_accounting_for_the_sum_the_devices_noise(z, d, n_min, n_max, m):
    p = params_for(z, 0.5, 2.0 / math.sqrt(d), d, n_min, n_max, m)
    z_eff = _paper_z_eff(p.sigma, n_min, 0.5 / p.gamma, d)
    assert z_eff == pytest.approx(p.noise_multiplier, rel=1e-9) and z_eff >= z * (1 - 1e-12)
    assert z_eff <= z * (1 + 1e-8)  # the smallest sigma: no noise wasted
    assert p.wrap_log2 <= WRAP_LOG2 and p.field_bits == m
    rounds, population, cohort = 30, 1000, n_max
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    # Replace-one moves the integer sum by up to twice one device's bound: the multiplier halves.
    acc.compose(dpa.SampledWithoutReplacementDpEvent(population, cohort, dpa.GaussianDpEvent(z_eff / 2)), rounds)
    charged = epsilon([RoundCharge(population, cohort, z)] * rounds, 1e-6)
    assert charged == pytest.approx(acc.get_epsilon(1e-6), abs=1e-6)


@pytest.mark.parametrize("sigma,n,d", [(0.3, 2, 10), (0.3, 5, 10), (0.25, 40, 1000), (0.5, 7, 3)])
def test_tau_and_z_eff_match_the_paper_where_tau_is_not_negligible(sigma, n, d):
    """At the sigmas rounds use tau is below 1e-100, so the test above cannot see it; at sigma
    below 1 it is most of rho: tau = 10 sum_{j=1}^{n-1} exp(-2 pi^2 sigma^2 j / (j + 1)), by the
    same plain loop."""
    from fedge.coordinator.dp.distributed import effective_noise_multiplier, tau

    loop = 0.0
    for k in range(1, n):
        loop += 10 * math.exp(-2 * math.pi ** 2 * sigma ** 2 * k / (k + 1))
    assert tau(sigma, n) == pytest.approx(loop, rel=1e-12) and loop > 0.1
    rounded = ddg.rounded_bound(3.0, d)
    assert effective_noise_multiplier(sigma, n, rounded, d) == pytest.approx(_paper_z_eff(sigma, n, 3.0, d), rel=1e-12)


def test_the_round_is_calibrated_for_the_lowest_quorum_before_unmask():
    """A secure round commits with as few masked inputs as the lowest quorum of its stages up
    to the mask stage (secagg/private.py): here the mask stage's 5 of the 10 asked, below the
    other stages' 8. The noise the devices add must reach z for a sum of those 5, by the paper's
    formula; calibrated for 8 it would fall short whenever only 5 masked inputs arrive."""
    from types import SimpleNamespace

    from fedge.coordinator.dp.round import RoundPlan
    from fedge.coordinator.rounds import Limits
    from fedge.coordinator.secagg.private import private_spec

    d, z, clip = 610, 1.0, 0.5
    base = SecAggSpec(bits=16, field_bits=16, clip_range=2.0 / math.sqrt(d))
    plan = RoundPlan(1000, 10, z, clip, 10, 1e-6, 5.0, 0.1, mechanism="distributed")
    limits = tuple(Limits(10, quorum, 60.0) for quorum in (8, 8, 5, 1))  # advertise, share, mask, unmask
    machine = SimpleNamespace(round_id=1, selected=tuple(f"d{i}" for i in range(10)), limits=limits)
    spec = private_spec(base, plan, machine, d, 16)
    assert spec.dp_clip_norm == clip and spec.field_bits == 16
    at_least = _paper_z_eff(spec.dp_sigma, 5, clip / spec.dp_gamma, d)
    assert at_least >= z * (1 - 1e-9)
    assert _paper_z_eff(spec.dp_sigma, 4, clip / spec.dp_gamma, d) < z  # the smallest sigma that does


@pytest.mark.parametrize("ratio,n,m,sigma,d,kappa", [(3.0, 10, 12, 200.0, 10, 0), (0.5, 50, 16, 800.0, 1000, 0),
                                                      (3.0, 10, 12, 150.0, 10, 100), (7.25, 4, 10, 60.0, 64, 0)])
def test_the_wrap_bound_is_the_union_bound_over_the_headroom_the_rounded_signal_leaves(ratio, n, m, sigma, d, kappa):
    """P(wrap) <= 2 d exp(-t^2 / (2 n sigma^2)), t = 2^(m-1) - 1 - n max(c / gamma + 1, kappa / 2):
    each of n devices' rounded coordinate is at most c / gamma + 1 (the L-inf clip, then rounding
    up), which on a coarse grid is far from c / gamma alone."""
    from fedge.coordinator.dp.distributed import wrap_log2

    gamma = 0.01
    headroom = 2 ** (m - 1) - 1 - n * max(ratio + 1, kappa / 2)
    bound = 2 * d * math.exp(-headroom ** 2 / (2 * n * sigma ** 2))
    assert 0 < headroom and 0 < bound < 1
    assert wrap_log2(gamma, sigma, ratio * gamma, d, n, m, kappa) == pytest.approx(math.log2(bound), rel=1e-9)


def test_rounding_costs_little_noise_at_16_bits():
    """Where the grid is fine (m = 16), rounding inflates the sensitivity by well under 1%."""
    p = params_for(1.0, 0.5, 2.0 / math.sqrt(610), 610, 80, 100, 16)
    assert p.rounded_bound / (0.5 / p.gamma) < 1.01 and p.tau < 1e-100


SECURE = SecAggConfig(enabled=True, bits=16, clip_range=0.05)
# z = 2: 1.0 in dp-accounting's replace-one terms (the sum moves by twice one device's bound)
PRIVATE = PrivacyConfig(enabled=True, mechanism="distributed", noise_multiplier=2.0, clip_norm=0.05,
                        target_epsilon=50.0, delta=1e-5)
SETTINGS = dict(secure_aggregation=SECURE, weighting="equal", compression=CompressionSpec(quant_bits=32),
                privacy=PRIVATE)


def test_config_accepts_distributed_with_secagg_and_refuses_the_rest_by_name():
    cfg = CoordinatorConfig(aggregator="mean", clients_per_round=5, **SETTINGS)
    assert cfg.compression.clip_norm == PRIVATE.clip_norm
    with pytest.raises(SecureAggregationConflict) as exc:
        CoordinatorConfig(aggregator="mean", **{**SETTINGS, "privacy": PrivacyConfig(enabled=True,
                                                                                     noise_multiplier=1.0)})
    assert exc.value.reason == "secagg_privacy"
    with pytest.raises(ConfigError, match="needs secure_aggregation.enabled = true"):
        CoordinatorConfig(aggregator="mean", weighting="equal", privacy=PRIVATE)
    adaptive = {**SETTINGS, "privacy": PrivacyConfig(enabled=True, mechanism="distributed", noise_multiplier=1.0,
                                                      target_quantile=0.5)}
    assert CoordinatorConfig(aggregator="mean", **adaptive).privacy.target_quantile == 0.5
    with pytest.raises(ConfigError, match="adaptive clipping.*sharded"):  # each group's count: not built
        CoordinatorConfig(aggregator="mean", shards=2, state_dsn="postgresql://db/fedge", **adaptive)
    with pytest.raises(ConfigError, match="mechanism"):
        PrivacyConfig(mechanism="local")


@pytest.mark.parametrize("bad", [dict(dp_gamma=0.1), dict(dp_clip_norm=1.0), dict(dp_sigma=3.0),
                                 dict(dp_sigma=3.0, dp_clip_norm=1.0)])
def test_the_spec_refuses_a_half_announced_mechanism(bad):
    with pytest.raises(ValueError, match="distributed DP"):
        SecAggSpec(**bad)


def test_a_device_refuses_an_absurd_grid():
    with pytest.raises(ValueError, match="gamma"):
        ddg.encode(np.ones(8), 1, 1.0, 1.0, 1e-30, 1.0, 16, np.random.default_rng(0))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _run_round(fleet, deadline_s):
    c = fleet.coordinator
    if not c.begin_round():
        return None
    for _ in range(40):
        fleet.drain()
        record = c.tick()
        if record is not None:
            return record
        fleet.clock.advance(1.0 if c.round.machine.stage_full else deadline_s + 1)
    raise AssertionError("the round never closed")


def _flat(params):
    return np.concatenate([np.asarray(params[k], dtype=np.float64).reshape(-1) for k in sorted(params)])


def test_a_secure_round_commits_the_decoded_noised_sum_and_is_charged_as_distributed(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3, **SETTINGS)
    c = fleet.coordinator
    old = copy_params(c.state.params)
    record = _run_round(fleet, SECURE.stage_deadline_s)
    assert record.committed, record.why
    (task,) = {m.spec for m in fleet.wire if isinstance(m, SecAggTask)}
    assert task.distributed_dp and task.field_bits == 16 and task.dp_clip_norm == PRIVATE.clip_norm
    d = sum(v.size for v in old.values())
    expected = params_for(PRIVATE.noise_multiplier, PRIVATE.clip_norm, SECURE.clip_range, d, 3, 5, 16)  # quorum 3 of 5
    assert (task.dp_gamma, task.dp_sigma) == (expected.gamma, expected.sigma)
    masked = [m for m in fleet.wire if isinstance(m, MaskedInput)]
    values = {a.device_id: next(iter(a.secagg.inputs.values()))[0] for a in fleet.agents}
    total = np.sum(np.stack(list(values.values())).astype(np.int64), axis=0) % (1 << 16)
    mean = ddg.decode(total, task.rotation_seed, task.dp_gamma, 16) / len(values)
    np.testing.assert_allclose(_flat(c.state.params) - _flat(old), mean, atol=1e-6)
    # A 16-bit mask coordinate is 0 (masked == own) with probability 2^-16: counted over every device's
    # coordinates, as test_fleet_secagg_rounds' check, not per device, where one among 67 fails the 1% bound
    same = [unpack(m.data, m.length, m.field_bits) == values[m.device_id] for m in masked]
    assert len(same) == 5 and np.mean(np.concatenate(same)) < 0.01
    (charge,) = c.store.privacy_ledger()
    assert charge["mechanism"] == "distributed" and charge["noise_multiplier"] == 2.0
    from fedge.coordinator.dp.report import privacy_report
    from fedge.coordinator.dp.round import RoundPlan
    report = privacy_report([(record.round_id, RoundPlan.from_json(charge))])
    assert report["next_round"]["mechanism"] == "distributed" and report["rounds"][0]["mechanism"] == "distributed"


def test_a_field_too_small_for_the_noise_stops_the_round_by_name(model, tmp_path, caplog):
    """8 bits cannot hold 5 devices' noise at z = 40: once a ValueError and a traceback out of
    `fedge coordinator serve` at round 1 (a helper's fleet); now a ConfigError naming the setting,
    which the service reports in one line and its unit does not restart. A huge z is also said."""
    from fedge.coordinator.dp.distributed import FieldTooSmall

    with pytest.raises(FieldTooSmall, match="secure_aggregation.bits = 8"):
        params_for(40.0, 0.05, 0.05, 500, 3, 5, 8)
    assert issubclass(FieldTooSmall, ConfigError)
    loud = PrivacyConfig(**{**PRIVATE.__dict__, "noise_multiplier": 40.0})
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3,
                       **{**SETTINGS, "secure_aggregation": SecAggConfig(enabled=True, bits=8, clip_range=0.05),
                          "privacy": loud})
    with pytest.raises(FieldTooSmall):
        _run_round(fleet, SECURE.stage_deadline_s)
    assert "noise multiplier z = 40 over 5 expected devices" in caplog.text


def test_the_budget_stops_distributed_rounds_at_the_round_dp_accounting_says(model, tmp_path):
    from tests.coordinator.test_dp import _first_refused
    settings = {**SETTINGS, "privacy": PrivacyConfig(**{**PRIVATE.__dict__, "target_epsilon": 12.0})}
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3, **settings)
    refused = _first_refused("fixed", 5, 5, PRIVATE.noise_multiplier, 12.0, 1e-5)
    assert refused > 2
    committed = 0
    while (record := _run_round(fleet, SECURE.stage_deadline_s)) is not None:
        assert record.committed, record.why
        committed += 1
    assert committed + 1 == refused and fleet.coordinator.privacy.exhausted is not None
    assert len(fleet.coordinator.store.privacy_ledger()) == committed


def test_the_readme_distributed_config_block_loads(tmp_path):
    from pathlib import Path

    from fedge.coordinator.config import load_coordinator_config
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("**Distributed DP under secure aggregation**"):]
    start = section.index("```toml") + len("```toml")
    (tmp_path / "c.toml").write_text(section[start:section.index("```", start)])
    cfg = load_coordinator_config(tmp_path / "c.toml")
    assert cfg.privacy.mechanism == "distributed" and cfg.secure_aggregation.enabled and cfg.quorum == 90
