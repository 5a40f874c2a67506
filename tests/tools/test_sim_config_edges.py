"""SimConfig's documented limits tried exactly (the mutation8-adversary audit): each value at a
limit is taken and the next one past it refused by name. Oracles: the limits as documented in
config.py's fields and the README's option table."""

from __future__ import annotations

import math

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.tools.cli_args import MAX_COUNT
from fedge.tools.simulate.config import SimConfig, effective_hyper


@pytest.mark.parametrize("name", ["proxy_fraction", "guard_fraction"])
def test_a_held_back_share_of_one_half_is_taken_and_more_refused(name):
    assert getattr(SimConfig(**{name: 0.5}), name) == 0.5
    with pytest.raises(ConfigError, match=rf"{name} 0.5000001: in \[0, 0.5\]"):
        SimConfig(**{name: 0.5000001})


def test_new_devices_may_be_all_devices_but_one():
    assert SimConfig(devices=5, new_devices=4).new_devices == 4
    with pytest.raises(ConfigError, match=r"--new-devices must be in \[0, --devices\) = \[0, 5\)"):
        SimConfig(devices=5, new_devices=5)


@pytest.mark.parametrize("name", ["devices", "rounds", "finetune_steps", "new_device_steps", "local_epochs",
                                  "central_epochs"])
def test_a_count_of_exactly_the_cap_is_taken(name):
    extra = {"baselines": ("local", "central")} if name.endswith("epochs") else {}
    assert getattr(SimConfig(**{name: MAX_COUNT}, **extra), name) == MAX_COUNT == 1_000_000
    with pytest.raises(ConfigError, match=f"at most {MAX_COUNT:,}"):
        SimConfig(**{name: MAX_COUNT + 1}, **extra)


@pytest.mark.parametrize("name", ["local_epochs", "central_epochs"])
def test_a_baseline_of_zero_epochs_is_refused(name):
    assert getattr(SimConfig(**{name: 1}), name) == 1
    with pytest.raises(ConfigError, match=f"{name} must be >= 1"):
        SimConfig(**{name: 0})


def test_an_attack_scale_without_an_attack_is_refused():
    assert SimConfig(attack="scale", attack_scale=2.0).attack_spec.scale == 2.0
    with pytest.raises(ConfigError, match="--attack-scale needs --attack"):
        SimConfig(attack_scale=2.0)


@pytest.mark.parametrize("alpha, beta", [(math.inf, 0.5), (0.5, math.inf), (math.nan, 0.5), (-0.1, 0.5)])
def test_synthetic_refuses_an_alpha_or_beta_that_is_not_finite_and_non_negative(alpha, beta):
    assert SimConfig(dataset="synthetic", alpha=1e300, beta=0.0).split_alpha == 1e300
    with pytest.raises(ConfigError, match=r"synthetic\(α, β\) needs both >= 0 and finite"):
        SimConfig(dataset="synthetic", alpha=alpha, beta=beta)


@pytest.mark.parametrize("options", [{"standardize": True}, {"partition": "feature"}])
def test_a_guard_set_of_raw_inputs_is_refused_where_devices_transform_theirs(options):
    assert SimConfig(guard_fraction=0.1, partition="iid").guard_fraction == 0.1
    with pytest.raises(ConfigError, match="guard_fraction with --standardize or --partition feature"):
        SimConfig(guard_fraction=0.1, **options)


def test_devices_get_no_momentum_where_it_cannot_run():
    """config.py: momentum 0 for AdamW and on the ort-training backend (its SGD has none)."""
    sgd = TaskHyper(momentum=0.9)
    assert effective_hyper(sgd, "numpy").momentum == 0.9
    assert effective_hyper(sgd, "ort-training").momentum == 0.0
    assert effective_hyper(TaskHyper(optimizer="adamw", momentum=0.9), "numpy").momentum == 0.0
