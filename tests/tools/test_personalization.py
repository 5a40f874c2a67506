"""Personalization modes, new devices and strategy options on tiny simulated fleets."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.models.spec import load_spec
from fedge.tools.simulate.config import PERSONALIZATION, SimConfig, sim_config
from fedge.tools.simulate.fleet import run_simulation
from fedge.tools.simulate.personalization import personalized_spec


def _tiny(tmp_path, **kw) -> SimConfig:
    base = dict(dataset="digits", devices=8, rounds=4, clients_per_round=4, partition="dirichlet", alpha=0.3,
                epochs=2, out_dir=str(tmp_path))
    return sim_config(**{**base, **kw})


@pytest.mark.parametrize("mode", PERSONALIZATION)
def test_each_mode_trains_to_sane_accuracy(tmp_path, mode):
    result = run_simulation(_tiny(tmp_path, personalization=mode, finetune_steps=10))
    last = result.rounds[-1]
    # Ten classes: chance is 0.1; label-skewed devices with a few rounds clear 0.5 comfortably.
    assert last["personalized_accuracy_mean"] > 0.5
    assert 0.0 <= last["personalized_accuracy_min"] <= last["personalized_accuracy_mean"] <= 1.0
    assert last["global_accuracy"] > 0.2
    shared, personal = result.model["shared_params"], result.model["personal_params"]
    expected = {  # 64 -> 200 frozen -> 200 (LoRA rank 8) -> 10, for digits
        "adapters": (2 * 200 * 8 + 2010, 2010),
        "head": (2010, 2010),  # body frozen: only the global head is uploaded
        "finetune": (200 * 200 + 200 + 2010, 0),
        "full": (200 * 200 + 200 + 2010, 2010),
        "none": (2 * 200 * 8 + 2010, 0),
    }[mode]
    assert (shared, personal) == expected


def test_personalization_beats_the_global_model_on_skewed_devices(tmp_path):
    on = run_simulation(_tiny(tmp_path / "on", partition="shards", rounds=3))
    off = run_simulation(_tiny(tmp_path / "off", partition="shards", rounds=3, personalization="none"))
    assert on.rounds[-1]["personalized_accuracy_mean"] > off.rounds[-1]["personalized_accuracy_mean"] + 0.1


def test_new_devices_never_train_and_are_scored_separately(tmp_path):
    result = run_simulation(_tiny(tmp_path, devices=10, new_devices=3, new_device_steps=15))
    n = result.new_devices
    assert n["count"] == 3 and n["steps"] == 15
    assert 0.0 <= n["global_accuracy_min"] <= n["global_accuracy_mean"] <= 1.0
    assert n["tuned_accuracy_mean"] >= n["global_accuracy_mean"] - 0.05  # local steps do not wreck it
    assert max(r["selected"] for r in result.rounds) <= 7  # ceil(4 * 1.3) = 6 of the 7 that train
    untuned = run_simulation(_tiny(tmp_path / "b", devices=10, new_devices=3, new_device_steps=0))
    assert untuned.new_devices["tuned_accuracy_mean"] is None


def test_config_errors_name_the_option(tmp_path):
    with pytest.raises(ConfigError, match="personalization"):
        SimConfig(personalization="lora")
    with pytest.raises(ConfigError, match="new-devices"):
        SimConfig(devices=4, new_devices=4)
    with pytest.raises(ConfigError, match="no global head"):
        run_simulation(_tiny(tmp_path, new_devices=1, model=str(_personal_only(tmp_path))))


def _personal_only(tmp_path):
    path = tmp_path / "personal.toml"
    path.write_text('[model]\nname = "p"\ninput_shape = [64]\nnum_classes = 10\nhead = "personal"\n'
                    '[[model.layers]]\nname = "fc1"\nunits = 16\nmode = "lora"\n')
    return path


def test_mode_specs_are_transforms_of_the_base():
    base = load_spec("mnist-mlp-lora")
    assert personalized_spec(base, "adapters") is base
    assert personalized_spec(base, "none").head == "global"
    assert personalized_spec(base, "finetune").layers[1].mode == "shared"
    assert [layer.mode for layer in personalized_spec(base, "head").layers] == ["frozen", "frozen"]


@pytest.mark.parametrize("strategy,options", [("fedprox", {"prox_mu": 0.1}), ("fedavgm", {"server_momentum": 0.5}),
                                              ("fedadam", {"server_lr": 0.03})])
def test_strategy_options_reach_the_coordinator(tmp_path, strategy, options):
    result = run_simulation(_tiny(tmp_path, rounds=2, strategy=strategy, **options))
    assert all(r["committed"] for r in result.rounds)
    assert np.isfinite(result.rounds[-1]["global_accuracy"])


def test_a_second_run_in_the_same_folder_starts_fresh(tmp_path):
    first = run_simulation(_tiny(tmp_path, rounds=2))
    second = run_simulation(_tiny(tmp_path, rounds=2))  # device state from the first run is not reused
    assert [r["personalized_accuracy_mean"] for r in first.rounds] == [r["personalized_accuracy_mean"]
                                                                       for r in second.rounds]
