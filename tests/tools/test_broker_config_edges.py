"""tools/broker/config.py at its documented edges: the port and packet-size bounds tried exactly,
what makes a broker secured, and the rendered file carrying the config's own values
(mutation6-transport)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.broker.config import BrokerConfig, TlsFiles, render_config, shipped_text, write_config
from fedge.tools.broker.shard_users import shard_acl


def _option(text: str, name: str) -> list[str]:
    return re.findall(rf"^{name} (.+)$", text, re.MULTILINE)


def test_port_bounds_are_0_and_65535_inclusive():
    for port in (0, 1, 65535):
        assert BrokerConfig(port=port).port == port
    for port in (-1, 65536):
        with pytest.raises(ConfigError, match="0..65535"):
            BrokerConfig(port=port)


def test_max_packet_size_of_20_is_mosquittos_minimum_and_is_what_the_file_says():
    with pytest.raises(ConfigError, match="minimum of 20"):
        BrokerConfig(max_packet_size=19)
    for size in (20, 4096):
        text = render_config(BrokerConfig(port=2000, data_dir="/d", max_packet_size=size))
        assert _option(text, "max_packet_size") == [str(size)]


def test_a_tls_listener_without_client_certificates_is_not_secured():
    """Secured means a password file or client certificates: TLS alone authenticates nobody, so
    such a broker is an open one (anonymous clients, no ACL, no client-id lock)."""
    tls = TlsFiles("ca.crt", "s.crt", "s.key", require_certificate=False, use_identity_as_username=False)
    open_tls = BrokerConfig(port=2000, data_dir="/d", tls=tls)
    assert not open_tls.secured and open_tls.scheme == "mqtts"
    text = render_config(open_tls)
    assert _option(text, "allow_anonymous") == ["true"] and not _option(text, "acl_file")
    assert _option(text, "require_certificate") == ["false"]
    mtls = BrokerConfig(port=2000, data_dir="/d", tls=TlsFiles("ca.crt", "s.crt", "s.key"))
    assert mtls.secured
    text = render_config(mtls, acl_path="/acl")
    assert _option(text, "allow_anonymous") == ["false"] and _option(text, "use_username_as_clientid") == ["true"]


def test_a_sharded_brokers_acl_grants_its_workers(tmp_path):
    cfg = BrokerConfig(port=2000, data_dir=str(tmp_path), password_file=str(tmp_path / "passwd"), shards=2)
    conf = write_config(cfg, tmp_path)
    acl = Path(_option(conf.read_text(), "acl_file")[0]).read_text()
    assert acl == shipped_text("fedge.acl") + shard_acl(2)
    assert "user fedge-shard-1\n" in acl and "fedge/v1/shard/1/devices/%u/update" in acl
