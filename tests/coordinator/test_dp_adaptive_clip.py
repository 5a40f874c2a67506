"""Adaptive clipping (Andrew et al. 2021) in DP-FedAvg: the noise split that keeps the round's
accounted multiplier z, the geometric update against an oracle drawn from the same seeded
stream, convergence to the target quantile, S carried from round to round in the tasks, and the released
noise's variance against a chi-square band."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.aggregate import AggregatorContext, UpdateMeta
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.round import DpMean, RoundPlan, next_clip, noise_rng, split_noise
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import ManualDevice, make_fleet, pin_noise_keys
from tests.coordinator.test_dp_rounds import DP, _round
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("z,sigma", [(1.0, 5.0), (0.8, 0.5), (2.0, 1.01), (1.3, 100.0)])
def test_the_split_noise_is_one_gaussian_query_of_multiplier_z(z, sigma):
    z_delta = split_noise(z, sigma)
    assert z_delta > z
    assert (z_delta ** -2 + (2 * sigma) ** -2) ** -0.5 == pytest.approx(z, rel=1e-12)
    with pytest.raises(ValueError):
        split_noise(z, z / 2)


def test_adaptive_settings_validate_themselves():
    for bad in ({"target_quantile": 1.0}, {"target_quantile": -0.1}, {"clip_lr": 0}, {"clip_count_stddev": -1}):
        with pytest.raises(ConfigError):
            PrivacyConfig(**bad)


def _plan(clip, w=100, sigma=5.0, z=1.0, quantile=0.5, lr=0.2):
    return RoundPlan(1000, w, z, clip, w, 1e-5, 8.0, 0.0, delta_noise_multiplier=split_noise(z, sigma),
                     count_stddev=sigma, target_quantile=quantile, clip_lr=lr)


@pytest.mark.parametrize("w,norms", [(4, (0.5, 0.9, 1.5, 3.0)), (5, (0.5, 0.9, 3.0))])
def test_one_round_moves_s_by_the_noised_fraction_drawn_after_the_deltas_noise(w, norms):
    """b~ = (sum_i b_i + N(0, sigma_b^2)) / W, W the expected cohort fixed before the round
    whoever drops out (DP-FedAvg's fixed denominator): 3 reports of W = 5 in the second case;
    dividing by the reports would make the released S depend on how many answered."""
    plan = _plan(1.0, w=w)
    ctx = AggregatorContext(round_id=7, seed=3)
    agg = DpMean(plan, ctx.rng)
    for norm in norms:  # two within S
        agg.add({"w": np.array([norm, 0.0])}, UpdateMeta("d", 1.0, reported_norm=norm))
    agg.result()
    rng = ctx.rng()
    rng.normal(0.0, plan.delta_noise_multiplier * 1.0, size=(2,))  # the deltas' noise comes first
    fraction = (2 - len(norms) / 2 + rng.normal(0.0, plan.count_stddev)) / w + 0.5
    assert agg.next_clip == pytest.approx(1.0 * np.exp(-0.2 * (fraction - 0.5)), rel=1e-12)
    assert agg.next_clip == pytest.approx(next_clip(1.0, fraction, 0.5, 0.2), rel=1e-12)
    assert float(agg.carry()["dp"]["clip_norm"]) == agg.next_clip


@pytest.mark.parametrize("quantile", [0.3, 0.5, 0.8])
def test_s_converges_to_the_target_quantile_of_the_norms(quantile):
    """100 devices a round, log-normal norms; from S = 1% of the median, 80 rounds of η = 0.2."""
    rng = np.random.default_rng(0)
    clip = 0.01
    for round_id in range(80):
        agg = DpMean(_plan(clip, quantile=quantile), AggregatorContext(round_id, 0).rng)
        for norm in rng.lognormal(0.0, 0.5, size=100):
            agg.add({"w": np.array([norm])}, UpdateMeta("d", 1.0, reported_norm=float(norm)))
        agg.result()
        clip = agg.next_clip
    truth = float(np.exp(0.5 * _normal_quantile(quantile)))
    assert clip == pytest.approx(truth, rel=0.15)


def _normal_quantile(q: float) -> float:
    from statistics import NormalDist
    return NormalDist().inv_cdf(q)


def test_the_next_round_asks_devices_to_clip_at_the_new_s(model, tmp_path):
    from fedge.coordinator.dp.config import PrivacyConfig as P
    privacy = P(enabled=True, noise_multiplier=1.0, clip_norm=0.05, target_epsilon=50.0, delta=1e-5,
                target_quantile=0.5, clip_count_stddev=1.0)
    fleet = make_fleet(model, tmp_path, clients_per_round=4, store=RoundStore(tmp_path / "s.db"), **DP,
                       privacy=privacy)
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(4)]
    fleet.drain()
    c = fleet.coordinator
    # Not the OS's keys: S grows over two rounds unless their count noises N(0, 1) sum past 4
    # (b~ = N / 4 against gamma = 0.5), 0.23% of the time (43 of 20,000 random key pairs).
    pin_noise_keys(c)
    clips = []
    for _ in range(3):
        assert c.begin_round()
        fleet.drain()
        clips.append(devices[0].task().compression.clip_norm)
        assert clips[-1] == c.round.privacy.clip_norm
        for m in devices:  # every device had to clip: S should grow
            m.send(encode_message(m.update({k: np.zeros(v, np.float32) for k, v in c.shapes.items()},
                                           update_id=f"r{c.round.ctx.round_id}", metrics={"norm": 1.0})))
        assert _round(fleet).committed
        assert float(c.state.extra["dp"]["clip_norm"]) != clips[-1]
    assert clips[0] == 0.05 and clips[2] > clips[0]
    assert [e["clip_norm"] for e in c.store.privacy_ledger()] == clips


def _chi_square_band(n: int, z: float = 4.42) -> tuple[float, float]:
    """The central (1 - 1e-5) interval of chi^2_n / n, by Wilson and Hilferty's cube-root normal
    approximation (relative error far below the band's width at these n)."""
    spread = z * np.sqrt(2 / (9 * n))
    return (1 - 2 / (9 * n) - spread) ** 3, (1 - 2 / (9 * n) + spread) ** 3


@pytest.mark.parametrize("adaptive", [False, True])
def test_the_released_noise_has_the_std_of_the_multiplier_the_plan_charges(adaptive):
    """Over 100 rounds, each with its own noise key, the residual W * result - Σ clip(Δ_i) of DpMean
    has per-coordinate variance (z_Δ S)^2, z_Δ = z without adaptive clipping (what the accountant
    is told) and z_Δ = split_noise(z, σ_b) with it (here 1.81 z: the band tells the two apart)."""
    z, s, w, sigma_b, dim = 1.0, 0.3, 3, 0.6, 1000
    keys = np.random.default_rng(2)
    residual = []
    for round_id in range(100):
        plan = RoundPlan(1000, w, z, s, w, 1e-5, 8.0, 0.0, noise_key=keys.bytes(16).hex(), **(
            {"delta_noise_multiplier": split_noise(z, sigma_b), "count_stddev": sigma_b, "target_quantile": 0.5,
             "clip_lr": 0.2} if adaptive else {}))
        agg = DpMean(plan, noise_rng(plan, 0, round_id))
        deltas = [keys.normal(size=dim) * scale for scale in (0.1, 1.0, 10.0)]
        for delta in deltas:
            agg.add({"w": delta}, UpdateMeta("d", 1.0, reported_norm=float(np.linalg.norm(delta))))
        clipped = sum(d * min(1.0, s / np.linalg.norm(d)) for d in deltas)  # plain loop of the clip
        residual.append(agg.result()["w"].astype(np.float64) * w - clipped)
    residual = np.concatenate(residual)
    z_delta = split_noise(z, sigma_b) if adaptive else z
    low, high = _chi_square_band(residual.size)
    variance = float(np.mean(residual ** 2))  # the mean is 0: the sum of squares over n is chi^2_n / n
    assert low < variance / (z_delta * s) ** 2 < high
    assert not low < variance / (1.03 * z_delta * s) ** 2 < high  # the band refuses a std 3% off
