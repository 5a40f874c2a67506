"""The coordinator TOML at its documented limits (coordinator/config.py): min_reports up to
clients_per_round and the default quorum ceil(clients_per_round / 2), the largest seed MAX_SEED,
privacy.mechanism implied "distributed" only with secure aggregation on too, and FedProx's
prox_mu, which every task carries as its mu, refused at start past the wire's range."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from fedge.coordinator.config import MAX_SEED, CoordinatorConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.edge_runtime.kernel.configfile import from_dict
from fedge.edge_runtime.kernel.errors import ConfigError


def test_min_reports_may_be_clients_per_round_and_not_one_more():
    assert CoordinatorConfig(clients_per_round=4, min_reports=4).quorum == 4
    with pytest.raises(ConfigError, match="min_reports must be between 0 and clients_per_round"):
        CoordinatorConfig(clients_per_round=4, min_reports=5)


@pytest.mark.parametrize("clients", [1, 2, 3, 7, 10])
def test_the_default_quorum_is_half_the_round_rounded_up(clients):
    assert CoordinatorConfig(clients_per_round=clients).quorum == math.ceil(clients / 2)


def test_the_largest_seed_a_file_may_set_is_2_to_the_42_minus_1():
    assert from_dict(CoordinatorConfig, {"seed": 2**42 - 1}, "c.toml").seed == MAX_SEED
    with pytest.raises(ConfigError, match="seed"):
        from_dict(CoordinatorConfig, {"seed": 2**42}, "c.toml")


def test_privacy_alone_keeps_its_central_mechanism():
    privacy = {"enabled": True, "noise_multiplier": 1.0}
    cfg = from_dict(CoordinatorConfig, {"clients_per_round": 4, "privacy": privacy}, "c.toml")
    assert cfg.privacy.mechanism == PrivacyConfig().mechanism == "central"
    assert not any(note.startswith("privacy.mechanism") for note in cfg.implied)


def test_fedprox_mu_past_the_wire_range_is_refused_at_start():
    assert CoordinatorConfig(strategy="fedprox", prox_mu=1e6).prox_mu == 1e6  # TaskHyper.mu's bound
    with pytest.raises(ConfigError, match="a value the coordinator would send is out of range"):
        CoordinatorConfig(strategy="fedprox", prox_mu=2e6)


def test_a_seed_past_max_seed_set_in_code_is_refused_like_one_in_a_file():
    """`fedge simulate --seed` reaches the coordinator as replace(config, seed=...), past from_dict's
    bound: a seed of 5e12 loaded, and every secure round was abandoned at its first stage (its
    SecAggTask's rotation_seed 1.0e19 out of the wire's 64-bit range, not sent)."""
    assert replace(CoordinatorConfig(), seed=MAX_SEED).seed == MAX_SEED
    for seed in (MAX_SEED + 1, 5 * 10**12):
        with pytest.raises(ConfigError, match=rf"seed must be in \[0, {MAX_SEED}\]"):
            replace(CoordinatorConfig(), seed=seed)
