"""The device config's own checks (mutation7-kernel), each a ConfigError naming what is wrong:
a device id that names the coordinator or a folder above the state, and a noise floor that
is not finite from a Python caller (the TOML loader refuses inf and nan before the class sees
them, so only a caller that builds the config in Python reaches this check)."""

from __future__ import annotations

import math

import pytest

from fedge.edge_runtime.device_config import DataConfig, DeviceConfig, DevicePrivacyConfig
from fedge.edge_runtime.kernel.errors import ConfigError

DATA = DataConfig(npz="data.npz")


@pytest.mark.parametrize("device_id, message", [("coordinator", "not 'coordinator'"), (".", "cannot name a folder"),
                                                ("..", "cannot name a folder")])
def test_a_device_id_that_names_the_coordinator_or_a_folder_is_refused(device_id, message):
    assert DeviceConfig(device_id="pi-007", data=DATA).device_id == "pi-007"
    with pytest.raises(ConfigError, match=message):
        DeviceConfig(device_id=device_id, data=DATA)


@pytest.mark.parametrize("value", [math.inf, math.nan, -0.1])
def test_a_noise_floor_that_is_not_finite_and_non_negative_is_refused(value):
    assert DevicePrivacyConfig(own_noise_multiplier=0.0).own_noise_multiplier == 0.0
    with pytest.raises(ConfigError, match="own_noise_multiplier must be >= 0 and finite"):
        DevicePrivacyConfig(own_noise_multiplier=value)
