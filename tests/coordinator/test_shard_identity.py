"""sharding/identity.py: the broker identity worker k logs in with ([service] shard_credentials)."""

from __future__ import annotations

import pytest

from fedge.coordinator.sharding.identity import shard_identities
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.tools import provision

BROKER = MqttSettings(url="mqtt://broker.lan:1883", username="coordinator", password="leader", keepalive_s=7)


def test_each_shard_gets_its_users_identity_and_keeps_the_rest_of_broker(tmp_path):
    for k in range(2):
        provision.provision_password(f"fedge-shard-{k}", tmp_path / "passwd", tmp_path, password=f"pw{k}")
    got = shard_identities(BROKER, str(tmp_path), 2)
    assert [(s.username, s.password) for s in got] == [("fedge-shard-0", "pw0"), ("fedge-shard-1", "pw1")]
    assert {(s.url, s.keepalive_s) for s in got} == {(BROKER.url, 7)}  # the credentials file's url is not used
    assert shard_identities(BROKER, "", 2) is None


def test_a_missing_or_wrong_file_stops_the_worker_before_it_takes_a_shard(tmp_path):
    provision.provision_password("fedge-shard-0", tmp_path / "passwd", tmp_path)
    with pytest.raises(ConfigError, match="fedge-shard-1.toml"):
        shard_identities(BROKER, str(tmp_path), 2)
    (tmp_path / "fedge-shard-1.toml").write_text('[broker]\nusername = "coordinator"\n')
    with pytest.raises(ConfigError, match="expected 'fedge-shard-1'"):
        shard_identities(BROKER, str(tmp_path), 2)
    (tmp_path / "fedge-shard-1.toml").write_text('[other]\n')
    with pytest.raises(ConfigError, match="no \\[broker\\] table"):
        shard_identities(BROKER, str(tmp_path), 2)


def test_a_certificate_for_another_shard_is_refused(tmp_path):
    """With certificates the broker takes the CN as the username: shard 0's file naming shard 1's
    certificate would log worker 0 in with shard 1's rights, and it would never hear its own uploads."""
    from fedge.tools.cli import main

    assert main(["provision", "ca", "--out", str(tmp_path / "ca")]) == 0
    out = tmp_path / "bundle"
    assert main(["provision", "coordinator", "--cert", "--ca-dir", str(tmp_path / "ca"), "--out", str(out),
                 "--shards", "2"]) == 0
    tls = MqttSettings(url="mqtts://broker.lan:8883", ca_file=str(out / "ca.crt"))
    got = shard_identities(tls, str(out), 2)
    assert [s.cert_file.endswith(f"fedge-shard-{k}.crt") for k, s in enumerate(got)] == [True, True]
    shard0 = out / "fedge-shard-0.toml"
    shard0.write_text(shard0.read_text().replace("fedge-shard-0.crt", "fedge-shard-1.crt"))
    with pytest.raises(ConfigError, match="is for 'fedge-shard-1', expected 'fedge-shard-0'"):
        shard_identities(tls, str(out), 2)
