"""One config system: the simulator runs a CoordinatorConfig, read from the file ops use."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.errors import ConfigError, MalformedPayload
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, TrainTask
from fedge.tools.cli import main
from fedge.tools.simulate.config import AGENT_PRESETS, SIM_COORDINATOR, SimConfig, sim_config, with_options

# The README's ops walkthrough's coordinator (step 3), and the [broker] table `fedge provision
# coordinator` appends to it.
README_OPS_TOML = (Path(__file__).resolve().parents[2] / "examples/ops/coordinator.toml").read_text()
CREDS_TOML = '[broker]\nurl = "mqtt://127.0.0.1:1883"\nusername = "coordinator"\npassword = "secret"\n'


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(lr=float("nan")),
                                 dict(optimizer="rmsprop")])
def test_task_hyper_validates_itself(bad):
    with pytest.raises(ValueError):
        TaskHyper(**bad)


@pytest.mark.parametrize("bad", [dict(quant_bits=16), dict(topk_fraction=0.0), dict(topk_fraction=1.5),
                                 dict(topk_fraction=float("nan")), dict(clip_norm=-1.0)])
def test_compression_spec_validates_itself(bad):
    with pytest.raises(ValueError):
        CompressionSpec(**bad)


def test_bad_hyper_is_a_config_error_in_a_file_and_malformed_on_the_wire(tmp_path):
    path = tmp_path / "coordinator.toml"
    path.write_text("[hyper]\nepochs = 0\n")
    with pytest.raises(ConfigError, match="epochs"):
        load_coordinator_config(path)
    path.write_text("[compression]\nquant_bits = 16\n")
    with pytest.raises(ConfigError, match="quant_bits"):
        load_coordinator_config(path)
    task = TrainTask(round_id=1, task_id="t", device_id="d", model_id="m", model_version=0, params=b"")
    object.__setattr__(task.hyper, "lr", -1.0)  # what a hostile peer can put in a frame
    with pytest.raises(MalformedPayload, match=r"TrainTask\.hyper"):
        decode_message(encode_message(task))


def test_with_options_finds_each_field_where_it_sits():
    cfg = with_options(SIM_COORDINATOR, lr=0.5, quant_bits=4, clip_norm=2.0, norm_bound=3.0, strategy="fedprox")
    assert (cfg.hyper.lr, cfg.compression.quant_bits, cfg.compression.clip_norm) == (0.5, 4, 2.0)
    assert (cfg.norm_bound, cfg.strategy) == (3.0, "fedprox")
    assert cfg.hyper.epochs == SIM_COORDINATOR.hyper.epochs  # untouched fields keep the base's
    with pytest.raises(ConfigError, match="'lrr' is not"):
        with_options(SIM_COORDINATOR, lrr=0.1)
    with pytest.raises(ConfigError, match="quant_bits"):
        with_options(SIM_COORDINATOR, quant_bits=3)
    with pytest.raises(ConfigError, match="clients_per_round"):
        sim_config(clients_per_round=0)


def test_presets_keep_the_entry_points_values():
    # The values each entry point ran with before one config system (changing them is later work).
    h = SimConfig().coordinator.hyper
    assert (h.epochs, h.batch_size, h.lr, h.momentum, h.optimizer) == (2, 20, 0.02, 0.9, "sgd")
    assert replace(SIM_COORDINATOR, hyper=TaskHyper()) == CoordinatorConfig()  # else the coordinator's defaults
    from fedge.tools.bench.hetero_grid import QUICK, HeteroGrid

    g = HeteroGrid().coordinator
    got = (g.clients_per_round, g.hyper.epochs, g.hyper.batch_size, g.hyper.lr, g.hyper.momentum)
    assert got == (10, 5, 20, 0.02, 0.9)
    q = QUICK.coordinator
    assert (q.clients_per_round, q.hyper.epochs, q.hyper.batch_size, q.hyper.lr) == (5, 2, 20, 0.02)


def _simulate(folder, *flags, status: int = 0) -> dict:
    out = folder / "run.json"
    assert main(["simulate", "--dataset", "digits", "--devices", "4", "--rounds", "2", "--quiet",
                 "--json", str(out), *flags]) == status
    return json.loads(out.read_text())


def test_simulate_runs_the_readme_ops_config_and_flags_override_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the file's relative paths (artifacts, coordinator.db) resolve here
    config = tmp_path / "coordinator.toml"
    config.write_text(README_OPS_TOML + CREDS_TOML)
    doc = _simulate(tmp_path / "sim", "--config", str(config), "--lr", "0.1")
    ran = doc["config"]["coordinator"]
    assert ran["clients_per_round"] == 2  # from the file (the preset says 10)
    assert ran["hyper"]["lr"] == 0.1 and ran["hyper"]["epochs"] == 1  # the flag; the coordinator's default
    assert ran["hyper"]["momentum"] == 0.0  # the file's (the coordinator's default), not the preset's 0.9
    assert all(r["committed"] and r["participants"] == 2 for r in doc["rounds"])
    # A simulation uses its own model folder and never opens the service's database.
    assert ran["state_db"] == "" and ran["artifacts_dir"] != "artifacts"
    assert not (tmp_path / "coordinator.db").exists() and not (tmp_path / "artifacts").exists()


def test_norm_bound_and_clip_norm_reach_the_coordinator_and_devices(tmp_path):
    # A bound no real delta meets: every update is rejected and no round commits...
    doc = _simulate(tmp_path / "bound", "--norm-bound", "1e-3", status=1)  # a run without commits fails
    assert not any(r["committed"] for r in doc["rounds"])
    assert doc["summary"]["rejections"].get("norm_bound", 0) > 0
    # ...unless the devices clip their deltas below it first (here from a config file).
    config = tmp_path / "clip.toml"
    config.write_text("norm_bound = 1e-3\n[compression]\nclip_norm = 1e-4\n")
    doc = _simulate(tmp_path / "clip", "--config", str(config))
    assert doc["config"]["coordinator"]["compression"]["clip_norm"] == 1e-4
    assert all(r["committed"] for r in doc["rounds"]) and "norm_bound" not in doc["summary"]["rejections"]


@pytest.mark.parametrize("bad", [dict(norm_bound=-1.0), dict(norm_bound=float("nan")), dict(max_update_bytes=0)])
def test_coordinator_config_refuses_bad_bounds(bad):
    with pytest.raises(ConfigError):
        CoordinatorConfig(**bad)


def test_device_config_tables_validate_themselves(tmp_path):
    from fedge.edge_runtime.device_config import AgentConfig, ProbeConfig, load_device_config

    for bad in (dict(checkin_s=0.0), dict(poll_s=-1.0), dict(republish_s=float("nan")),
                dict(fetch_timeout_s=float("inf"))):
        with pytest.raises(ConfigError):
            AgentConfig(**bad)
    with pytest.raises(ConfigError):
        ProbeConfig(check_interval_s=0.0)
    path = tmp_path / "dev.toml"
    path.write_text('device_id = "d1"\n[data]\nnpz = "d.npz"\n[agent]\ncheckin_s = -5\n')
    with pytest.raises(ConfigError, match="agent.checkin_s"):
        load_device_config(path)


def test_flags_over_file_over_preset(tmp_path):
    import argparse

    from fedge.tools.simulate.cli import add_arguments, build_config

    p = argparse.ArgumentParser()
    add_arguments(p)
    preset = build_config(p.parse_args([]), "out")
    assert preset.coordinator == SIM_COORDINATOR and preset.eligibility.min_battery_percent != 12
    assert build_config(p.parse_args(["--transport", "mqtt"]), "out").coordinator.round_deadline_s == 30.0
    coord, device = tmp_path / "c.toml", tmp_path / "d.toml"
    coord.write_text("round_deadline_s = 90\nover_selection = 1.5\n[hyper]\nlr = 0.3\nepochs = 3\n")
    device.write_text('device_id = "d1"\n[data]\nnpz = "x.npz"\n[eligibility]\nmin_battery_percent = 12\n'
                      '[agent]\ncheckin_s = 7\n')
    cfg = build_config(p.parse_args(["--config", str(coord), "--device-config", str(device), "--transport", "mqtt",
                                     "--epochs", "4", "--no-error-feedback", "--personal-head-from-global"]),
                       "out")
    c = cfg.coordinator
    assert (c.round_deadline_s, c.over_selection, c.hyper.lr) == (90.0, 1.5, 0.3)  # the file, mqtt or not
    assert c.hyper.epochs == 4 and c.compression.error_feedback is False  # the flags
    assert c.hyper.personal_head_from_global and not preset.coordinator.hyper.personal_head_from_global
    assert c.hyper.batch_size == TaskHyper().batch_size  # neither: the coordinator's default, not the preset's
    assert cfg.eligibility.min_battery_percent == 12 and cfg.agent_timings.checkin_s == 7.0
    assert preset.agent is None and preset.agent_timings == AGENT_PRESETS["memory"]


def test_agent_presets_are_the_timings_the_fleets_used():
    import inspect

    from fedge.edge_runtime.agent import DeviceAgent
    from fedge.edge_runtime.loop import AgentLoop

    # In memory: DeviceAgent's own defaults. Over MQTT: check in every 30 s, resend after 5 s.
    agent = inspect.signature(DeviceAgent).parameters
    loop = inspect.signature(AgentLoop).parameters
    for name in ("checkin_s", "republish_s", "fetch_timeout_s"):
        assert getattr(AGENT_PRESETS["memory"], name) == agent[name].default
    assert AGENT_PRESETS["memory"].poll_s == AGENT_PRESETS["mqtt"].poll_s == loop["poll_s"].default
    mqtt = AGENT_PRESETS["mqtt"]
    assert (mqtt.checkin_s, mqtt.republish_s, mqtt.fetch_timeout_s) == (30.0, 5.0, agent["fetch_timeout_s"].default)


def test_a_fleet_larger_than_the_coordinators_registry_cap_is_refused_before_it_runs(tmp_path, capsys):
    """[coordinator] max_devices below the devices simulated: the run went on, the devices past the
    cap were refused as registry_full, never trained, and each scored 0 in the personalized mean."""
    config = tmp_path / "c.toml"
    config.write_text("[coordinator]\nmax_devices = 3\nclients_per_round = 3\n")
    assert main(["simulate", "--config", str(config), "--dataset", "digits", "--devices", "4", "--rounds", "1",
                 "--quiet", "--json", str(tmp_path / "run.json")]) == 2
    assert "4 devices, but the coordinator's max_devices is 3" in capsys.readouterr().err
    assert not (tmp_path / "run.json").exists()
    config.write_text("[coordinator]\nmax_devices = 4\nclients_per_round = 3\n")
    assert main(["simulate", "--config", str(config), "--dataset", "digits", "--devices", "4", "--rounds", "1",
                 "--quiet", "--json", str(tmp_path / "run.json")]) == 0


def test_simulate_refuses_the_coordinators_identity_directory_by_name(tmp_path, capsys):
    """Simulated devices hold no identity keys: with [coordinator.secure_aggregation]
    directory_file the coordinator refused every key advertisement (secagg_no_identity, or
    secagg_bad_signature for a directory naming the simulated ids) and the run ended with no
    round committed. It is refused before the run, by its key."""
    (tmp_path / "ids.json").write_text(json.dumps({f"dev{i}": "ab" * 32 for i in range(4)}))
    config = tmp_path / "c.toml"
    config.write_text(f'[coordinator]\nclients_per_round = 4\nmin_reports = 2\n[coordinator.secure_aggregation]\n'
                      f'enabled = true\nclip_range = 0.5\ndirectory_file = "{tmp_path / "ids.json"}"\n')
    assert main(["simulate", "--config", str(config), "--dataset", "digits", "--devices", "4", "--rounds", "1",
                 "--quiet", "--json", str(tmp_path / "run.json")]) == 2
    err = capsys.readouterr().err
    assert "coordinator.secure_aggregation.directory_file: fedge simulate's devices have no identity keys" in err
    assert not (tmp_path / "run.json").exists()
