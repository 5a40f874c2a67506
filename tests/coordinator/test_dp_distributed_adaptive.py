"""Adaptive clipping (Andrew et al. 2021) under distributed DP: each device's "was my norm within
S" bit rides in the secure sum as one more coordinate, noised by the device (ddg.count_coordinate),
and the coordinator moves S from the unmasked, noised count.

Oracles: Kairouz et al.'s Thm. 1 and 2 written out with the joint L2 sensitivity
sqrt(Delta_2^2 + kappa^2 / 4) over d + 1 coordinates, then dp-accounting called directly; the
count's noise measured over many draws; a real secure round over the in-memory broker whose
next S is Andrew et al.'s geometric step from the devices' own count coordinates, summed here."""

from __future__ import annotations

import math

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting import rdp

from fedge.coordinator.dp.accountant import RoundCharge, epsilon
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.distributed import WRAP_LOG2, params_for
from fedge.coordinator.dp.round import CLIP_GROUP, next_clip, split_noise
from fedge.edge_runtime.kernel.secagg import ddg
from fedge.edge_runtime.kernel.secagg.messages import MaskedInput, SecAggSpec, SecAggTask
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_dp_distributed import SECURE, SETTINGS, _run_round
from tests.tiny_model import build_tiny_model

BETA = math.exp(-0.5)


def _paper_z_eff_with_count(sigma, n, scaled_norm, d, kappa):
    """Thm. 1 and 2 of Kairouz et al. 2021 for the joint vector: the update's rounded bound and
    the count coordinate's kappa / 2 in one L2 sensitivity, tau by a plain loop over d + 1."""
    a = scaled_norm
    delta2 = min(math.sqrt(a * a + d / 4 + math.sqrt(2 * math.log(1 / BETA)) * (a + math.sqrt(d) / 2)),
                 a + math.sqrt(d))
    tau = sum(10 * math.exp(-2 * math.pi ** 2 * sigma ** 2 * k / (k + 1)) for k in range(1, n))
    return 1 / math.sqrt((delta2 ** 2 + (kappa / 2) ** 2) / (n * sigma ** 2) + 2 * tau * (d + 1))


@pytest.mark.parametrize("z,d,n_min,n_max,m,sigma_b", [(1.0, 610, 80, 100, 16, 5.0), (2.5, 5000, 90, 100, 16, 5.0),
                                                      (0.8, 64, 8, 10, 14, 1.0),
                                                      # small models with the default sigma_b (W / 20): the
                                                      # search's coarse grids give kappa < 2, the one chosen not
                                                      (1.0, 100, 10, 12, 16, 5.0), (1.0, 7850, 800, 1000, 20, 50.0)])
def test_the_count_coordinate_is_inside_the_charge(z, d, n_min, n_max, m, sigma_b):
    p = params_for(z, 0.5, 2.0 / math.sqrt(d), d, n_min, n_max, m, count_stddev=sigma_b)
    kappa = p.count_scale
    assert kappa >= 2 and kappa % 2 == 0
    assert p.sigma * math.sqrt(n_min) / kappa >= sigma_b  # the count's noise is at least sigma_b
    z_eff = _paper_z_eff_with_count(p.sigma, n_min, 0.5 / p.gamma, d, kappa)
    assert z_eff == pytest.approx(p.noise_multiplier, rel=1e-9) and z_eff >= z * (1 - 1e-12)
    # the update alone is calibrated for the split z_Delta (dp/round.split_noise), as in central DP
    assert _paper_z_eff_with_count(p.sigma, n_min, 0.5 / p.gamma, d, 0) >= split_noise(z, sigma_b) * (1 - 1e-9)
    assert p.wrap_log2 <= WRAP_LOG2
    rounds, population = 30, 1000
    acc = rdp.RdpAccountant(neighboring_relation=dpa.NeighboringRelation.REPLACE_ONE)
    acc.compose(dpa.SampledWithoutReplacementDpEvent(population, n_max, dpa.GaussianDpEvent(z_eff / 2)), rounds)
    assert epsilon([RoundCharge(population, n_max, z)] * rounds, 1e-6) >= acc.get_epsilon(1e-6) - 1e-6


def test_the_count_coordinate_decodes_to_the_centred_count_with_the_noise_it_claims():
    sigma, scale, m, devices, trials = 40.0, 16, 20, 25, 4000
    rng = np.random.default_rng(3)
    within = rng.random(devices) < 0.3
    norms = np.where(within, 0.5, 2.0)  # S = 1
    sums = np.array([sum(int(ddg.count_coordinate(n, 1.0, scale, sigma, m, rng)[0]) for n in norms) % (1 << m)
                     for _ in range(trials)])
    counts = np.array([ddg.count_from(int(t), scale, m) for t in sums])
    centred = float(np.sum(within) - devices / 2)
    std = sigma * math.sqrt(devices) / scale
    assert abs(counts.mean() - centred) < 4 * std / math.sqrt(trials)
    assert counts.std() == pytest.approx(std, rel=0.05)


def test_a_norm_exactly_s_counts_as_within_under_both_mechanisms():
    """Andrew et al.'s bit is b = 1 when ||Delta|| <= S: at the edge the device's count coordinate
    (distributed) and DpMean's count (central) agree, and the next float up is outside."""
    from types import SimpleNamespace

    from fedge.coordinator.dp.round import DpMean, RoundPlan

    m, scale, above = 16, 8, float(np.nextafter(1.0, 2.0))
    tiny = 1e-3  # N_Z(0, tiny^2) is 0 but for a chance of about 1e-200
    rng = np.random.default_rng(0)
    assert int(ddg.count_coordinate(1.0, 1.0, scale, tiny, m, rng)[0]) == scale // 2
    assert int(ddg.count_coordinate(above, 1.0, scale, tiny, m, rng)[0]) == (1 << m) - scale // 2
    plan = RoundPlan(10, 4, 1.0, 1.0, 4, 1e-5, 3.0, 0.1, delta_noise_multiplier=1.2, count_stddev=2.0,
                     target_quantile=0.5, clip_lr=0.2)
    agg = DpMean(plan, lambda: np.random.default_rng(0))
    for norm in (0.5, 1.0, above, 3.0):
        agg.add({"w": np.array([0.1, 0.0])}, SimpleNamespace(reported_norm=norm))
    assert agg.within == 2


def test_the_spec_refuses_an_odd_scale_or_one_without_noise():
    base = dict(field_bits=16, bits=16, dp_gamma=1e-3, dp_clip_norm=0.5)
    assert SecAggSpec(**base, dp_sigma=10.0, dp_count_scale=8).count_coordinates == 1
    for bad in (dict(dp_sigma=10.0, dp_count_scale=7), dict(dp_count_scale=8)):
        with pytest.raises(ValueError, match="dp_count_scale"):
            SecAggSpec(**{**base, **bad})


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("clip,grows", [(1e-4, True), (50.0, False)])
def test_a_secure_round_moves_s_by_the_devices_noised_count(model, tmp_path, clip, grows):
    # The devices draw their noise from their own entropy: sigma_b = 0.3 keeps the count's noise
    # on b~ (0.3 / 5) far below the 0.5 a cohort that is all clipped, or all within, moves it.
    private = PrivacyConfig(enabled=True, mechanism="distributed", noise_multiplier=0.5, clip_norm=clip,
                            target_epsilon=500.0, delta=1e-5, target_quantile=0.5, clip_lr=0.2,
                            clip_count_stddev=0.3)
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3,
                       **{**SETTINGS, "privacy": private})
    c = fleet.coordinator
    record = _run_round(fleet, SECURE.stage_deadline_s)
    assert record.committed, record.why
    (spec,) = {m.spec for m in fleet.wire if isinstance(m, SecAggTask)}
    assert spec.dp_count_scale > 0 and spec.dp_clip_norm == clip
    assert {m.task.compression.clip_norm for m in fleet.wire if isinstance(m, SecAggTask)} == {clip}
    masked = [m for m in fleet.wire if isinstance(m, MaskedInput)]
    d = sum(v.size for v in c.state.params.values())
    assert masked and {m.length for m in masked} == {d + 1}
    # Oracle: the devices' own count coordinates, summed mod 2^m, decoded, and Andrew et al.'s step.
    last = [int(next(iter(a.secagg.inputs.values()))[0][-1]) for a in fleet.agents]
    total = sum(last) % (1 << spec.field_bits)
    centred = min(max(ddg.count_from(total, spec.dp_count_scale, spec.field_bits), -2.5), 2.5)  # 5 bits' range
    want = next_clip(clip, centred / 5 + 0.5, 0.5, 0.2)
    got = float(c.state.extra[CLIP_GROUP]["clip_norm"])
    assert got == pytest.approx(want, rel=1e-12)
    assert (got > clip) == grows  # every device clipped: S grows; none: S shrinks
    # the next round clips at the new S, on the device and in the spec
    fleet.clock.advance(3600)
    assert c.begin_round()
    fleet.drain()
    assert {m.spec.dp_clip_norm for m in fleet.wire if isinstance(m, SecAggTask) and m.task.round_id == 2} == {got}


@pytest.mark.parametrize("direction", [-1, 1])
def test_one_device_cannot_move_s_past_what_the_cohorts_bits_can(model, tmp_path, direction):
    """Inside the secure sum a device may send any field value: one that put 2^(m-1) - 3 kappa in
    the count coordinate moved the count by about 2.6 devices' worth (a bit moves it by 0.5) and S
    past any value honest bits give. The released count is now clamped to the survivors' range;
    within it, one device still moves S further than its bit could (the sum hides who sent what)."""
    private = PrivacyConfig(enabled=True, mechanism="distributed", noise_multiplier=0.5, clip_norm=1.0,
                            target_epsilon=500.0, delta=1e-5, target_quantile=0.5, clip_lr=0.2,
                            clip_count_stddev=0.3)
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3,
                       **{**SETTINGS, "privacy": private})
    evil = fleet.agents[0].secagg
    real_mask = evil._mask

    def mask(message):
        values, examples, spec = evil.inputs[message.task_id]
        values = values.copy()
        # 3.5 kappa below the wrap: here 2^15 / kappa = 5.63 counts, so the evil count is 2.13 and the four
        # honest ones add 2.0 +- 0.35 (noise sigma / kappa = 0.17 each). At 3 kappa the total wrapped past
        # 2^(m-1) when the honest noise passed +1.0 (about 3 sigma: it did once in a two-process run).
        top = (1 << (spec.field_bits - 1)) - 7 * spec.dp_count_scale // 2
        values[-1] = (direction * top) % (1 << spec.field_bits)
        evil.inputs[message.task_id] = (values, examples, spec)
        return real_mask(message)

    evil._mask = mask
    record = _run_round(fleet, SECURE.stage_deadline_s)
    assert record.committed, record.why
    got = float(fleet.coordinator.state.extra[CLIP_GROUP]["clip_norm"])
    (spec,) = {m.spec for m in fleet.wire if isinstance(m, SecAggTask)}
    total = sum(int(next(iter(a.secagg.inputs.values()))[0][-1]) for a in fleet.agents) % (1 << spec.field_bits)
    raw = ddg.count_from(total, spec.dp_count_scale, spec.field_bits)
    assert got == pytest.approx(next_clip(1.0, min(max(raw, -2.5), 2.5) / 5 + 0.5, 0.5, 0.2), rel=1e-12)
    lowest, highest = next_clip(1.0, 1.0, 0.5, 0.2), next_clip(1.0, 0.0, 0.5, 0.2)  # all within, all clipped
    assert lowest <= got <= highest
    if direction > 0:  # the four others' bits and noise leave the total past the cohort's range
        assert raw > 2.5 and got == pytest.approx(lowest, rel=1e-12)
