"""Privacy settings that are each legal but do not fit together, or do not fit the z the
budget calibrates: refused by name (ConfigError) at load, or when the first round is planned,
never with a raw ValueError from the accountant or the clip split (coordinator/dp/config.py,
budget.py); and a delta too large for the fleet, which the budget runs but warns about."""

from __future__ import annotations

import logging

import pytest

from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.dp.round import split_noise
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_dp_rounds import DP
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_the_pld_accountant_with_fixed_size_sampling_is_refused_at_load_by_name():
    """dp-accounting 0.6's PLD accountant has no fixed-size sampling event: the config loaded,
    and the first round's check died with a raw ValueError from accountant.epsilon."""
    with pytest.raises(ConfigError, match="privacy.accountant = 'pld' needs sampling = 'poisson'"):
        PrivacyConfig(enabled=True, noise_multiplier=1.0, accountant="pld", sampling="fixed")
    assert PrivacyConfig(enabled=True, noise_multiplier=1.0, accountant="pld", sampling="poisson").accountant == "pld"


def test_a_count_noise_too_small_for_the_set_z_is_refused_at_load_by_name():
    """Adaptive clipping splits z as z_delta^-2 + (2 sigma_b)^-2 = z^-2, which needs 2 sigma_b > z;
    a clip_count_stddev at or below z / 2 loaded, and every round's plan died with a raw
    ValueError from split_noise."""
    with pytest.raises(ValueError):  # the split itself: no z_delta exists
        split_noise(1.0, 0.5)
    with pytest.raises(ConfigError, match="privacy.clip_count_stddev 0.5 must exceed noise_multiplier / 2"):
        PrivacyConfig(enabled=True, noise_multiplier=1.0, target_quantile=0.5, clip_count_stddev=0.5)
    assert PrivacyConfig(enabled=True, noise_multiplier=1.0, target_quantile=0.5, clip_count_stddev=0.51)
    assert PrivacyConfig(enabled=True, noise_multiplier=1.0, clip_count_stddev=0.1)  # no adaptive clipping: unused


def test_a_count_noise_too_small_for_the_calibrated_z_is_refused_by_name_when_the_round_is_planned(model, tmp_path):
    """With noise_multiplier = 0, z exists only once the first round is planned; a clip_count_stddev
    below its half then stops the round by name (a ConfigError, as the service reports one) and
    nothing is opened or charged."""
    privacy = PrivacyConfig(enabled=True, rounds=5, target_epsilon=8.0, delta=1e-5, clip_norm=0.05,
                            target_quantile=0.5, clip_count_stddev=0.01)
    fleet = make_fleet(model, tmp_path, sizes=(10, 12, 14), **DP, privacy=privacy)
    c = fleet.coordinator
    with pytest.raises(ConfigError, match="privacy.clip_count_stddev 0.01 must exceed z / 2"):
        c.begin_round()
    assert c.round is None and c.store.privacy_ledger() == []


@pytest.mark.parametrize("delta,warned", [(0.5, True), (1 / 3, True), (0.3, False), (1e-5, False)])
def test_a_delta_of_at_least_one_over_the_population_is_warned_once(model, tmp_path, caplog, delta, warned):
    """(ε, δ)-DP with δ >= 1/n admits a mechanism that publishes one random device's data in full;
    the budget ran such a fleet (3 eligible devices, δ = 1/3) without a word. It still runs it
    (the ε reported is right at that δ), once warned, by name."""
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.0, target_epsilon=100.0, delta=delta, clip_norm=0.05)
    fleet = make_fleet(model, tmp_path, sizes=(10, 12, 14), **DP, privacy=privacy)
    c = fleet.coordinator
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator.privacy"):
        assert c.begin_round()
        c.round = None  # plan the next round too: the warning is said once
        assert c.privacy.plan(2, 3, 3, 3) is not None
    said = [r.getMessage() for r in caplog.records if "privacy.delta" in r.getMessage()]
    assert len(said) == (1 if warned else 0)
    assert not warned or "at least 1 / 3 eligible devices" in said[0]
