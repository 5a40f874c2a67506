"""Every field of every TOML config fedge loads, given a hostile value, is refused by a
ConfigError that names the file and the field's dotted key path, or it is accepted because the
value works, and the loaded config then holds it (ACCEPTS says why, field by field).

The fields come from tests/config_fuzz.py, which walks the configs' dataclasses from each
loader (tests/config_fuzz_loaders.py): a field added later is fuzzed here without a change,
and a hostile value it accepts fails this test until ACCEPTS says why it works. Kinds no field
may accept (config_fuzz.ALWAYS_REFUSED): a wrong type, true or 1.5 for an integer, NaN, inf,
an integer past 64 bits, a megabyte of text (configfile._coerce refuses them for every field).
Also: an unknown key in every table, and a typo of every key, are refused by name.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from tests.config_fuzz import ALWAYS_REFUSED, MAY_ACCEPT, cases, leaves, tables, to_toml, with_value
from tests.config_fuzz_loaders import LOADERS

# Class.key -> the MAY_ACCEPT kinds of value it takes, and why such a value works there.
_OFF = "0 turns it off, or has it derived (the field's comment says which)"
_RANGE = "0 lies in the field's documented range and works as a value"
_UNSET = '"" leaves the setting out (the field\'s comment says what applies then)'
ACCEPTS = {
    **dict.fromkeys(("CoordinatorConfig.min_reports", "CoordinatorConfig.server_lr", "CoordinatorConfig.prox_mu",
                     "CoordinatorConfig.control_norm_bound", "CoordinatorConfig.norm_bound",
                     "CoordinatorConfig.fetch_interval_s", "CoordinatorConfig.task_resend_s",
                     "CoordinatorConfig.checkin_refill_s", "CoordinatorConfig.model_part_bytes",
                     "CoordinatorConfig.metrics_port", "CoordinatorConfig.shards", "CoordinatorConfig.keep_rounds",
                     "RobustConfig.bucket_size",
                     "RobustConfig.cc_tau", "NormBoundConfig.initial_bound", "NormBoundConfig.weight_multiplier",
                     "NormBoundConfig.exclude_multiplier", "SignSplitConfig.gap", "SignSplitConfig.round_clip",
                     "TaskHyper.max_steps", "TaskHyper.max_grad_norm",
                     "TaskHyper.divergence_factor", "TaskHyper.mu", "CompressionSpec.clip_norm",
                     "EvalConfig.every_rounds", "EvalConfig.devices", "PrivacyConfig.noise_multiplier",
                     "PrivacyConfig.rounds", "PrivacyConfig.target_quantile", "PrivacyConfig.clip_count_stddev",
                     "SecAggConfig.neighbours", "SecAggConfig.threshold", "SecAggConfig.clip_range",
                     "SecAggConfig.share_deadline_s", "SecAggConfig.mask_deadline_s", "SecAggConfig.unmask_deadline_s",
                     "SecAggConfig.share_min", "SecAggConfig.mask_min", "SecAggConfig.unmask_min",
                     "ServiceSettings.rounds", "ServiceSettings.round_pause_s", "ServiceSettings.metrics_linger_s",
                     "MqttSettings.keepalive_s", "MqttSettings.max_packet_size", "MqttSettings.max_inbound_bytes",
                     "MqttSettings.max_pending_bytes", "DevicePrivacyConfig.own_noise_multiplier",
                     "EligibilityPolicy.min_battery_percent", "EligibilityPolicy.min_cpu_idle_percent",
                     "EligibilityPolicy.min_free_memory_mb", "ImportOptions.num_classes", "FactTrace.period_s",
                     "AsyncConfig.staleness_exponent"), ({"zero"}, _OFF)),
    **dict.fromkeys(("CoordinatorConfig.seed", "DeviceConfig.seed", "ModelSpec.init_seed", "ImportOptions.init_seed",
                     "CoordinatorConfig.server_momentum", "CoordinatorConfig.server_beta1",
                     "CoordinatorConfig.server_beta2", "CoordinatorConfig.abandon_backoff_s",
                     "CoordinatorConfig.shard_takeover_s", "CoordinatorConfig.pace_jitter_s",
                     "RobustConfig.byzantine_fraction", "ScreenConfig.tolerance", "TaskHyper.momentum",
                     "TaskHyper.weight_decay", "TaskHyper.beta1", "TaskHyper.beta2", "SecAggConfig.dropout",
                     "SecAggConfig.corrupt", "AsyncConfig.max_staleness", "MqttSettings.session_expiry_s",
                     "DeviceProfile.dropout_probability", "FactTrace.battery_start_percent",
                     "FactTrace.drain_percent_per_min", "FactTrace.charge_percent_per_min",
                     "FactTrace.cpu_idle_percent", "FactTrace.free_memory_mb", "FactTrace.charging_s",
                     "FactTrace.offline_s", "FactTrace.hot_s"),
                    ({"zero"}, _RANGE)),
    **dict.fromkeys(("CoordinatorConfig.state_db", "CoordinatorConfig.state_dsn", "CoordinatorConfig.artifacts_dir",
                     "CoordinatorConfig.guard_set", "ServiceSettings.shard_credentials", "MqttSettings.username",
                     "MqttSettings.password", "MqttSettings.ca_file", "MqttSettings.cert_file", "MqttSettings.key_file",
                     "SecAggDeviceConfig.identity_file", "SecAggDeviceConfig.directory_file", "DataConfig.statistics",
                     "SecAggConfig.directory_file", "ModelSpec.onnx_sha256", "ModelSpec.onnx_cut",
                     "ImportOptions.name"), ({"empty_string"}, _UNSET)),
    # a check-in at the device's next poll: the coordinator's check-in limit (checkin_burst) bounds the cost
    "CoordinatorConfig.pace_idle_s": ({"zero"}, "0: the device checks in again at its next poll"),
    "CoordinatorConfig.pace_declined_s": ({"zero"}, "0: the device checks in again at its next poll"),
    "CoordinatorConfig.metrics_host": ({"empty_string"}, '"" binds every interface, as in http.server'),
    "TaskHyper.eps": ({"zero"}, "SGD does not read eps (the base config's optimizer)"),
    "AgentConfig.upload_latency_s": ({"zero"}, "0: the upload margin is the update's bytes over the rate alone"),
    "EligibilityPolicy.max_temperature_c": ({"zero", "negative"}, "in [-40, 150] °C: a policy for cold sites"),
    "FactTrace.temperature_c": ({"zero", "negative"}, "a trace of a cold device"),
    "FactTrace.hot_temperature_c": ({"zero", "negative"}, "a trace of a cold device"),
    "ModelSpec.name": ({"empty_string"}, "a label in graph names and reports; the model id hashes the spec"),
    "DeviceProfile.name": ({"empty_string"}, "a label in reports"),
    "DeviceProfile.description": ({"empty_string"}, "a label in reports"),
    "ModelSpec.onnx_features": ({"zero", "negative"}, "read only with onnx set, where it must be > 0"),
    "LayerSpec.kernel": ({"zero", "negative"}, "a conv layer's only (checked there); the base layer is dense"),
}

# Each field once, from the first loader that reaches it (the coordinator's from `serve`'s file).
FIELDS = list({f"{leaf.owner.__name__}.{leaf.key}": (loader, leaf)
               for loader in reversed(LOADERS) for leaf in leaves(loader.cls, loader.table)}.values())


def _load(tmp_path, loader, doc):
    path = tmp_path / f"{loader.name}.toml"
    path.write_text(to_toml(doc))
    return loader.load(path)


def _held(config, loader, path: str):
    """The value at dotted `path` ("model.layers[0].units") of a config `loader` loaded."""
    for part in (path[len(loader.table) + 1:] if loader.table else path).split("."):
        name, _, index = part.partition("[")
        fields = {f.metadata.get("toml", f.name): f.name for f in dataclasses.fields(config)}
        config = getattr(config, fields[name])
        if index:
            config = config[int(index[:-1])]
    return config


def _as_held(value):
    """A TOML value as a config holds it: arrays as tuples."""
    return tuple(_as_held(v) for v in value) if isinstance(value, list) else value


@pytest.mark.parametrize("loader", LOADERS, ids=[loader.name for loader in LOADERS])
def test_the_base_documents_load(tmp_path, loader):
    assert isinstance(_load(tmp_path, loader, loader.base), loader.cls)


@pytest.mark.parametrize("loader, leaf", FIELDS, ids=[leaf.path for _, leaf in FIELDS])
def test_a_hostile_value_is_refused_by_its_key_path_or_works(tmp_path, loader, leaf):
    wrong = []
    for case in cases(loader):
        if case.leaf != leaf:
            continue
        try:
            config = _load(tmp_path, loader, with_value(loader.base, leaf.path, case.value))
        except ConfigError as exc:
            if f"{loader.name}.toml: {leaf.path}" not in str(exc):
                wrong.append(f"{case.kind}: refused without its key path: {str(exc)[:300]}")
            continue
        except Exception as exc:  # noqa: BLE001 - the finding: any other error is a traceback for the user
            wrong.append(f"{case.kind}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        allowed, _why = ACCEPTS.get(case.name, (set(), ""))
        assert case.kind in MAY_ACCEPT | ALWAYS_REFUSED
        if case.kind not in allowed:
            wrong.append(f"{case.kind}: {str(case.value)[:40]!r} accepted (add it to ACCEPTS with why it works, "
                         "or refuse it)")
        elif _held(config, loader, leaf.path) != _as_held(case.value):
            wrong.append(f"{case.kind}: accepted, but the config holds {_held(config, loader, leaf.path)!r}")
    assert not wrong, "\n".join(wrong)


def test_every_allowance_names_a_field_that_exists():
    names = {f"{leaf.owner.__name__}.{leaf.key}" for _, leaf in FIELDS}
    assert set(ACCEPTS) <= names, sorted(set(ACCEPTS) - names)


TABLES = [(loader, at) for loader in LOADERS for _, at in tables(loader.cls, loader.table)]


@pytest.mark.parametrize("loader, at", TABLES, ids=[f"{loader.name}:{at or '(root)'}" for loader, at in TABLES])
def test_an_unknown_key_is_refused_in_every_table(tmp_path, loader, at):
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, loader, with_value(loader.base, f"{at}.no_such_key" if at else "no_such_key", 1))
    assert re.search(rf"{loader.name}\.toml(: {re.escape(at)})?: unknown key\(s\) 'no_such_key'", str(refused.value))


@pytest.mark.parametrize("loader, leaf", FIELDS, ids=[leaf.path for _, leaf in FIELDS])
def test_a_typo_of_a_key_is_refused_with_the_key_it_meant(tmp_path, loader, leaf):
    key = leaf.key
    typo = key[0] + key[2] + key[1] + key[3:] if len(key) > 2 else key + key[-1]  # 2nd and 3rd letters swapped
    typo = typo if typo != key else key + key[-1]  # ... or, where they are the same, the last one doubled
    table = leaf.path[: -len(leaf.key)].rstrip(".")
    with pytest.raises(ConfigError) as refused:
        _load(tmp_path, loader, with_value(loader.base, f"{table}.{typo}" if table else typo, 1))
    assert f"{loader.name}.toml" in str(refused.value)
    assert f"unknown key(s) {typo!r} (did you mean {leaf.key!r}?)" in str(refused.value)
