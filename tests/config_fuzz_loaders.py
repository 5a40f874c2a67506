"""The loaders tests/test_config_fuzz.py fuzzes: every command's TOML config, each with the
smallest document it accepts (the fuzz changes one field of it)."""

from __future__ import annotations

from unittest import mock

from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedge.coordinator.service import ServiceConfig, load_service_config
from fedge.edge_runtime.device_config import AgentConfig, DeviceConfig, load_device_config
from fedge.edge_runtime.eligibility import EligibilityPolicy, load_policy
from fedge.models.onnx_import import ImportOptions
from fedge.models.spec import ModelSpec, load_spec
from fedge.tools.simulate.config import load_device_tables
from fedge.tools.simulate.profiles import DeviceProfile, load_profile

from .config_fuzz import Loader

SPEC = {"name": "m", "input_shape": [4], "num_classes": 2,
        "layers": [{"name": "fc1", "kind": "dense", "units": 3, "mode": "lora"}]}


def load_import_options(path):
    """load_spec's `onnx = PATH` branch up to the file: its [model] table read as ImportOptions."""
    with mock.patch("fedge.models.onnx_import.import_spec", side_effect=lambda options: options):
        return load_spec(path)


LOADERS = (  # `fedge coordinator serve`; `fedge simulate --config` (the same CoordinatorConfig, plain)
    Loader("service", load_service_config, ServiceConfig, "", {"coordinator": {"artifacts_dir": "a"}}),
    Loader("coordinator", load_coordinator_config, CoordinatorConfig, "", {}),
    # `fedge device run`; `fedge device probe --config`; `fedge simulate --device-config`
    Loader("device", load_device_config, DeviceConfig, "", {"device_id": "d1", "data": {"npz": "x.npz"}}),
    Loader("eligibility", load_policy, EligibilityPolicy, "eligibility", {}),
    Loader("sim-agent", lambda path: load_device_tables(path)[1], AgentConfig, "agent", {"agent": {}}),
    # model specs (models/specs/*.toml, `fedge build-artifacts`), and an import's options
    Loader("spec", load_spec, ModelSpec, "model", {"model": SPEC}),
    Loader("import", load_import_options, ImportOptions, "model", {"model": {"onnx": "m.onnx"}}),
    # device profiles (hardware/profiles/*.toml, `fedge simulate --profiles`)
    Loader("profile", load_profile, DeviceProfile, "", {}),
)
