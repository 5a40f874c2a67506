"""The device's own floor on the noise it adds ([privacy] own_noise_multiplier on the device,
secagg_participant.check_noise_floor): against a coordinator that runs the protocol but
announces too little noise, or none, the device declines by name before it trains.

Oracles: the noise ddg.encode really adds (measured over many draws, in real units, divided by
S) for the multiplier the floor compares; real rounds over the in-memory broker, whose devices
decline or not on either side of the announced value."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.edge_runtime.device_config import DevicePrivacyConfig, load_device_config
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.secagg import ddg
from fedge.edge_runtime.kernel.secagg.messages import KeyAdvertisement, SecAggSpec, SecAggTask
from fedge.edge_runtime.secagg_participant import NOISE_BELOW_FLOOR, own_noise_multiplier
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_dp_distributed import SECURE, SETTINGS, _run_round
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_the_multiplier_the_floor_compares_is_the_noise_ddg_adds():
    d = 40_000
    spec = SecAggSpec(field_bits=20, clip_range=0.5, dp_gamma=2e-3, dp_sigma=30.0, dp_clip_norm=0.4, dp_count_scale=8)
    values, rounded = ddg.encode(np.zeros(d), 7, spec.dp_clip_norm, spec.clip_range, spec.dp_gamma,
                                 spec.dp_sigma, spec.field_bits, np.random.default_rng(1))
    noise = ddg.signed((values.astype(np.int64) - rounded) % (1 << spec.field_bits), spec.field_bits)
    # Kairouz et al. 2021, Thm. 1 written out: the rounded update's L2 bound, a = S / gamma
    a = spec.dp_clip_norm / spec.dp_gamma
    delta2 = min(math.sqrt(a * a + d / 4 + math.sqrt(2 * 0.5) * (a + math.sqrt(d) / 2)), a + math.sqrt(d))
    measured = float(np.std(noise)) / math.sqrt(delta2 ** 2 + (spec.dp_count_scale / 2) ** 2)
    assert own_noise_multiplier(spec, d) == pytest.approx(measured, rel=0.03)  # 40,000 draws: about 0.4% std error
    assert own_noise_multiplier(spec) == spec.dp_sigma * spec.dp_gamma / spec.dp_clip_norm >= own_noise_multiplier(
        spec, d)  # the bound the device checks before it trains
    assert own_noise_multiplier(SecAggSpec()) == 0.0 and own_noise_multiplier(None) == 0.0


def _floored(fleet, floor: float) -> None:
    for agent in fleet.agents:  # what build_device sets from the device's [privacy] table
        agent.own_noise_floor = agent.secagg.own_noise_floor = floor


@pytest.mark.parametrize("margin,declined", [(1.01, True), (0.99, False)])
def test_a_distributed_round_announcing_less_than_the_floor_is_declined_before_training(model, tmp_path, margin,
                                                                                         declined):
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3, **SETTINGS)
    c = fleet.coordinator
    assert c.begin_round()  # a first round, only to learn what this coordinator announces
    fleet.drain()
    d = sum(v.size for v in c.state.params.values())
    (announced,) = {own_noise_multiplier(m.spec, d) for m in fleet.wire if isinstance(m, SecAggTask)}
    assert announced > 0
    fleet = make_fleet(model, tmp_path / "again", sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3,
                       **SETTINGS)
    _floored(fleet, announced * margin)
    record = _run_round(fleet, SECURE.stage_deadline_s)
    if declined:
        assert not record.committed and set(record.declines.values()) == {NOISE_BELOW_FLOOR}
        assert len(record.declines) >= 3  # abandoned once the quorum of 3 of 5 is out of reach
        assert not [m for m in fleet.wire if isinstance(m, KeyAdvertisement)]  # nothing left a device
    else:
        assert record.committed, record.why


@pytest.mark.parametrize("privacy", [False, True])
def test_with_a_floor_a_task_that_adds_no_noise_on_the_device_is_declined(model, tmp_path, privacy):
    """Plain FedAvg, and central DP (the coordinator's noise, which the device cannot check)."""
    from fedge.coordinator.dp.config import PrivacyConfig

    extra = {"privacy": PrivacyConfig(enabled=True, noise_multiplier=1.0, clip_norm=0.5, target_epsilon=50.0),
             "weighting": "equal"} if privacy else {}
    fleet = make_fleet(model, tmp_path, sizes=(12, 20), **extra)
    _floored(fleet, 0.05)
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    fleet.clock.advance(c.config.round_deadline_s + 1)
    record = c.tick()
    assert record is not None and not record.committed
    assert record.declines and set(record.declines.values()) == {NOISE_BELOW_FLOOR}
    _floored(fleet, 0.0)  # off: the same fleet trains again
    fleet.clock.advance(3600)
    assert c.begin_round()
    fleet.drain()
    assert c.tick().committed


@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf")])
def test_the_device_config_refuses_a_floor_that_means_nothing(value):
    with pytest.raises(ConfigError, match="own_noise_multiplier"):
        DevicePrivacyConfig(own_noise_multiplier=value)


def test_a_device_toml_sets_the_floor_and_it_is_off_by_default(tmp_path):
    path = tmp_path / "device.toml"
    path.write_text('device_id = "pi-007"\n[data]\nnpz = "data.npz"\n')
    assert load_device_config(path).privacy.own_noise_multiplier == 0.0
    path.write_text('device_id = "pi-007"\n[data]\nnpz = "data.npz"\n[privacy]\nown_noise_multiplier = 0.1\n')
    assert load_device_config(path).privacy.own_noise_multiplier == 0.1
