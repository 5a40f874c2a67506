"""Every config loader spells a failing key one way: the file, then the key's TOML dotted path
from that file's root (edge_runtime/kernel/configfile.py's key_at), whichever check refused it.

A wrong type once read "c.toml[coordinator].privacy.noise_multiplier", a device file's
"d.toml.broker.keepalive_s", and a class's own check "privacy.delta" or "clients_per_round"
(no file, no table) or "[data] npz". Oracle: the expected prefixes below, written by hand.
"""

from __future__ import annotations

import pytest

from fedge.coordinator.config import load_coordinator_config
from fedge.coordinator.service import load_service_config
from fedge.edge_runtime.device_config import load_device_config
from fedge.edge_runtime.eligibility import load_policy
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.simulate.config import load_device_tables
from fedge.tools.simulate.profiles import load_profile

SERVICE = '[coordinator]\nartifacts_dir = "a"\n'
DEVICE = 'device_id = "d1"\n[data]\nnpz = "x.npz"\n'

CASES = [  # (loader, file, text, how the message starts)
    (load_service_config, "c.toml", SERVICE + "clients_per_round = 0\n", "c.toml: coordinator.clients_per_round must"),
    (load_coordinator_config, "c.toml", SERVICE + "clients_per_round = 0\n",
     "c.toml: coordinator.clients_per_round must"),
    (load_coordinator_config, "s.toml", "clients_per_round = 0\n", "s.toml: clients_per_round must"),  # no table
    (load_service_config, "c.toml", SERVICE + "checkin_burst = 0\n", "c.toml: coordinator.checkin_burst must"),
    (load_service_config, "c.toml", "[service]\nmin_devices = 1_000_001\n" + SERVICE,
     "c.toml: service.min_devices must"),
    (load_service_config, "c.toml", SERVICE + "[coordinator.privacy]\nenabled = true\ndelta = 2.0\n",
     "c.toml: coordinator.privacy.delta must"),
    (load_service_config, "c.toml", SERVICE + '[coordinator.privacy]\nnoise_multiplier = "x"\n',
     "c.toml: coordinator.privacy.noise_multiplier: expected a number"),
    (load_service_config, "c.toml", SERVICE + "[coordinator.hyper]\nlrr = 1\n",
     "c.toml: coordinator.hyper: unknown key(s) 'lrr'"),
    (load_service_config, "c.toml", SERVICE + "[coordinator.secure_aggregation]\nenabled = true\nbits = 1\n",
     "c.toml: coordinator.secure_aggregation.bits must"),
    (load_service_config, "c.toml", SERVICE + 'aggregator = "mean"\nweighting = "equal"\n[coordinator.privacy]\n'
     'enabled = true\nnoise_multiplier = 1.0\nmechanism = "distributed"\n',
     "c.toml: coordinator.privacy.mechanism = 'distributed' needs secure_aggregation.enabled"),
    (load_service_config, "c.toml", "[coordinator]\n", "c.toml: coordinator.artifacts_dir is required"),
    (load_device_config, "d.toml", 'device_id = "d1"\n', "d.toml: data.npz = PATH is required"),
    (load_device_config, "d.toml", DEVICE + "[broker]\nkeepalive_s = 70000\n", "d.toml: broker.keepalive_s must"),
    (load_device_config, "d.toml", DEVICE + '[broker]\nkeepalive_s = "x"\n',
     "d.toml: broker.keepalive_s: expected an integer"),
    (load_device_config, "d.toml", DEVICE + '[broker]\nurl = "ftp://h"\n', "d.toml: broker.url 'ftp://h': scheme"),
    (load_device_config, "d.toml", DEVICE + "[eligibility]\nallowed_links = []\n",
     "d.toml: eligibility.allowed_links is empty"),
    (load_device_config, "d.toml", DEVICE + '[secagg]\nidentity_file = "k"\n',
     "d.toml: secagg.identity_file and directory_file go together"),
    (load_device_config, "d.toml", DEVICE + "[agent]\ncheckin_s = -5\n", "d.toml: agent.checkin_s must"),
    (load_device_tables, "d.toml", DEVICE + "[agent]\ncheckin_s = -5\n", "d.toml: agent.checkin_s must"),
    (load_policy, "e.toml", "[eligibility]\nwindow = 5\n", "e.toml: eligibility.window: expected a string"),
    (load_profile, "p.toml", "[trace]\nperiod_s = -1\n", "p.toml: trace.period_s = -1"),
    (load_profile, "p.toml", '[trace]\nlink = 3\n', "p.toml: trace.link: expected a string"),
    (load_profile, "p.toml", "compute_speed = 0\n", "p.toml: compute_speed = 0"),
]


@pytest.mark.parametrize("loader, name, text, start", CASES, ids=[c[3].split(" ", 2)[1] + f"-{i}"
                                                                   for i, c in enumerate(CASES)])
def test_a_refused_key_is_the_file_then_its_dotted_path(tmp_path, loader, name, text, start):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        loader(path)
    assert str(refused.value).startswith(start), str(refused.value)
