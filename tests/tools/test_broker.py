"""tools.broker: the shipped configs and ACL, rendered configs, and the broker child process."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import ANNOUNCE_TOPIC, DEVICE_CHANNELS, MODEL_PARTS_FILTER, device_topic
from fedge.tools.broker import config as broker_config
from fedge.tools.broker import process as broker_process
from fedge.tools.broker.config import (
    DEVICE_READS,
    DEVICE_WRITES,
    MAX_PACKET_SIZE,
    BrokerConfig,
    TlsFiles,
    acl_text,
    render_config,
    shipped_text,
)
from fedge.tools.broker.errors import BrokerStartFailed, BrokerUnavailable
from fedge.tools.broker.process import MosquittoProcess, free_port
from tests.mqtt_fixtures import RawClient


def _acl_rules(text: str) -> list[tuple[str, ...]]:
    return [tuple(line.split()) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _options(text: str) -> list[str]:
    return [line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")]


# -- the ACL: one copy, and it matches the protocol --------------------------------------------

def test_acl_grants_each_device_channel_one_way_and_the_coordinator_everything():
    assert set(DEVICE_WRITES) | set(DEVICE_READS) == set(DEVICE_CHANNELS)
    assert not set(DEVICE_WRITES) & set(DEVICE_READS)
    expected = ([("pattern", "write", f"fedge/v1/devices/%u/{k}") for k in DEVICE_WRITES]
                + [("pattern", "read", f"fedge/v1/devices/%u/{k}") for k in DEVICE_READS]
                + [("pattern", "read", ANNOUNCE_TOPIC), ("pattern", "read", MODEL_PARTS_FILTER),
                   ("user", "coordinator"), ("topic", "readwrite", "fedge/v1/#")])
    assert _acl_rules(acl_text()) == expected
    assert device_topic("x", "update").replace("x", "%u") == expected[1][2]


def test_rendered_broker_uses_the_shipped_acl(tmp_path):
    cfg = BrokerConfig(port=1883, data_dir=str(tmp_path), password_file=str(tmp_path / "passwd"))
    conf = broker_config.write_config(cfg, tmp_path)
    acl_path = re.search(r"^acl_file (.+)$", conf.read_text(), re.MULTILINE).group(1)
    assert Path(acl_path).read_text() == (Path(broker_config.__file__).parent / "files" / "fedge.acl").read_text()


# -- config text -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mosquitto-dev.conf", "mosquitto-prod.conf"])
def test_shipped_configs_are_secured_and_sized(name):
    text = shipped_text(name)
    opts = _options(text)
    assert "message_size_limit" not in opts  # breaks MQTT 5 clients in 2.0.11
    assert f"max_packet_size {MAX_PACKET_SIZE}" in text
    assert "allow_anonymous false" in text and "allow_anonymous true" not in text
    assert opts.count("listener") == opts.count("use_username_as_clientid")  # on every listener
    assert "acl_file /etc/mosquitto/fedge/fedge.acl" in text


def test_prod_config_requires_client_certificates_on_8883():
    text = shipped_text("mosquitto-prod.conf")
    block = text.split("listener 8883", 1)[1].split("listener ", 1)[0]
    for line in ("require_certificate true", "use_identity_as_username true", "use_username_as_clientid true"):
        assert line in block
    for option in ("persistence", "autosave_interval", "persistent_client_expiration", "max_queued_messages",
                   "max_inflight_messages"):
        assert option in _options(text)


def test_shipped_text_rewrites_install_paths():
    text = shipped_text("mosquitto-prod.conf", "/srv/broker", "/srv/data")
    assert "/etc/mosquitto/fedge/" not in text and "/var/lib/mosquitto/" not in text
    assert "password_file /srv/broker/passwd" in text and "persistence_location /srv/data/" in text


def test_render_open_and_secured():
    open_ = render_config(BrokerConfig(port=2000, data_dir="/d"))
    assert "allow_anonymous true" in open_ and "acl_file" not in open_ and "use_username_as_clientid" not in open_
    secured = render_config(BrokerConfig(port=2000, data_dir="/d", password_file="/p"), acl_path="/acl")
    for line in ("allow_anonymous false", "password_file /p", "acl_file /acl", "listener 2000 127.0.0.1",
                 "use_username_as_clientid true", f"max_packet_size {MAX_PACKET_SIZE}", "persistence_location /d/"):
        assert line in secured
    assert "message_size_limit" not in open_ + secured


def test_config_validation():
    with pytest.raises(ConfigError):
        BrokerConfig(port=70000)
    with pytest.raises(ConfigError):
        BrokerConfig(max_packet_size=10)
    with pytest.raises(ConfigError, match="lock out"):
        BrokerConfig(acl_file="/acl")  # an ACL with no way to log in
    with pytest.raises(ConfigError):
        TlsFiles("ca", "c", "k", require_certificate=False, use_identity_as_username=True)
    with pytest.raises(ConfigError):
        shipped_text("nope.conf")


# -- the process -------------------------------------------------------------------------------

def test_free_port_is_bindable_and_below_the_ephemeral_range():
    import socket

    low = broker_process._ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert len(ports) > 1  # drawn at random: 20 draws from thousands of ports
    for port in ports:
        if low > broker_process._PRIVATE_LOW + 100:  # else the kernel picked (port 0)
            assert broker_process._PRIVATE_LOW <= port < low, (port, low)
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            assert s.getsockname()[1] == port


def test_free_port_skips_a_port_in_use(monkeypatch):
    import socket

    class Picks:
        def __init__(self, ports):
            self.ports = iter(ports)

        def randrange(self, lo, hi):
            return next(self.ports)

    with socket.socket() as busy, socket.socket() as probe:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        probe.bind(("127.0.0.1", 0))
        taken, free = busy.getsockname()[1], probe.getsockname()[1]
        probe.close()
        monkeypatch.setattr(broker_process, "_ephemeral_low", lambda: 65535)
        monkeypatch.setattr(broker_process.random, "SystemRandom", lambda: Picks([taken, free]))
        assert free_port() == free


def test_missing_binary_names_the_package(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(broker_process, "SBIN_MOSQUITTO", "/nonexistent/mosquitto")
    assert broker_process.find_mosquitto() is None
    with pytest.raises(BrokerUnavailable, match="apt-get install mosquitto"):
        MosquittoProcess().start()


@pytest.mark.mosquitto
def test_open_broker_round_trip(mosquitto):
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    c = RawClient(mosquitto.host, mosquitto.port, client_id="sim")
    assert c.connect()
    # MQTT 5 clients learn the packet limit from the CONNACK
    assert c.connack_properties.MaximumPacketSize == MAX_PACKET_SIZE
    c.subscribe("t")
    c.publish("t", b"hello")
    assert c.expect()[:2] == ("t", b"hello")
    c.close()
    assert "mosquitto version" in mosquitto.log_text()


@pytest.mark.mosquitto
def test_kill9_then_restart_comes_back_on_the_same_port(mosquitto_factory):
    broker = mosquitto_factory()
    port, pid = broker.port, broker.pid
    broker.kill9()
    assert not broker.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie
    broker.restart()
    assert broker.running and broker.port == port and broker.pid != pid
    c = RawClient(broker.host, broker.port, client_id="after")
    assert c.connect()
    c.close()


@pytest.mark.mosquitto
def test_graceful_restart_keeps_retained_messages(mosquitto_factory):
    broker = mosquitto_factory()
    c = RawClient(broker.host, broker.port, client_id="coord")
    assert c.connect()
    c.publish(ANNOUNCE_TOPIC, b"v1", retain=True)
    c.close()
    broker.restart()  # SIGTERM saves the persistence db
    c = RawClient(broker.host, broker.port, client_id="dev")
    assert c.connect()
    c.subscribe(ANNOUNCE_TOPIC)
    assert c.expect() == (ANNOUNCE_TOPIC, b"v1", True)
    c.close()


@pytest.mark.mosquitto
def test_stop_is_by_pid_and_idempotent(mosquitto_factory):
    broker = mosquitto_factory()
    pid = broker.pid
    broker.stop()
    broker.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.mosquitto
def test_start_failure_reports_the_log_tail(mosquitto_binary, tmp_path):
    broker = MosquittoProcess.from_text("no_such_option 1\n", free_port(), workdir=tmp_path, binary=mosquitto_binary)
    with pytest.raises(BrokerStartFailed, match="no_such_option"):
        broker.start()


@pytest.mark.mosquitto
def test_shipped_dev_config_runs(mosquitto_binary, tmp_path):
    from fedge.tools.broker.passwd import upsert_password
    from fedge.tools.provision import write_broker_files

    conf = tmp_path / "etc"
    write_broker_files(conf)  # the configs, the ACL and the persistence directory they name
    upsert_password(conf / "passwd", "pi-a", "pw")
    port = free_port()
    text = _local((conf / "mosquitto-dev.conf").read_text(), {1883: port})
    with MosquittoProcess.from_text(text, port, workdir=tmp_path / "run", binary=mosquitto_binary) as broker:
        ok = RawClient(broker.host, port, username="pi-a", password="pw")
        assert ok.connect()
        assert ok.publish(device_topic("pi-b", "update"), b"x") == 0x87
        ok.close()
        anon = RawClient(broker.host, port)
        assert not anon.connect()
    _assert_saved(broker, conf / "data")


@pytest.mark.mosquitto
def test_shipped_prod_config_runs(mosquitto_binary, tmp_path):
    pytest.importorskip("cryptography")
    from fedge.tools.provision import (
        create_ca,
        issue_device_cert,
        issue_server_cert,
        provision_password,
        write_broker_files,
    )

    conf = tmp_path / "etc"
    write_broker_files(conf)
    ca = create_ca(tmp_path / "ca")
    issue_server_cert(ca, ["127.0.0.1"], conf)
    shutil.copy(ca.cert, conf / "ca.crt")
    device = issue_device_cert(ca, "pi-a", tmp_path / "dev")
    provision_password("pi-b", conf / "passwd", tmp_path / "creds")
    password = (tmp_path / "creds" / "pi-b.toml").read_text().split('password = "')[1].split('"')[0]
    mtls = free_port()
    pw = next(p for p in iter(free_port, None) if p != mtls)
    text = _local((conf / "mosquitto-prod.conf").read_text(), {8883: mtls, 8884: pw})
    with MosquittoProcess.from_text(text, mtls, scheme="mqtts", workdir=tmp_path / "run",
                                    binary=mosquitto_binary) as broker:
        a = RawClient(broker.host, mtls, tls=(ca.cert, device.cert, device.key))
        assert a.connect()
        assert a.publish(device_topic("pi-a", "update"), b"x") == 0x10  # allowed; nobody listening
        b = RawClient(broker.host, pw, username="pi-b", password=password, tls=(ca.cert, None, None))
        assert b.connect()
        assert b.publish(device_topic("pi-a", "update"), b"x") == 0x87
        a.close(), b.close()
        no_cert = RawClient(broker.host, mtls, tls=(ca.cert, None, None))
        assert not no_cert.connect()
    _assert_saved(broker, conf / "data")


def _assert_saved(broker: MosquittoProcess, data: Path) -> None:
    """The stopped broker saved its database where the config says (SIGTERM makes it save)."""
    assert "Error saving in-memory database" not in broker.log_text()
    assert (data / "mosquitto.db").is_file(), broker.log_text()[-2000:]
    assert data.stat().st_mode & 0o777 == 0o700


def _local(text: str, ports: dict[int, int]) -> str:
    """A shipped config made runnable in a test: loopback ports, and as root stay root (2.0
    reads its files after dropping to the mosquitto user, which cannot open a private tmp dir)."""
    for old, new in ports.items():
        text = re.sub(rf"^listener {old}\b.*$", f"listener {new} 127.0.0.1", text, flags=re.MULTILINE)
    return ("user root\n" if os.geteuid() == 0 else "") + text


def _ejabberd_grants(section: str, text: str | None = None) -> list[str]:
    """The topic filters of one access_* block of an ejabberd.yml, the shipped one by default (no
    YAML parser in the test venv)."""
    text = text or (Path(__file__).parents[2] / "hardware" / "ejabberd" / "ejabberd.yml").read_text()
    block = re.search(rf"^ {{4}}{section}:\n((?: {{6,}}.*\n)+)", text, re.MULTILINE).group(1)
    # every device grant is a bare allow (%u confines it); the fallback is the coordinator's alone
    assert re.findall(r"^ {8}- (.+)$", block, re.MULTILINE)[-2:] == ["allow: coordinator", "deny"]
    return re.findall(r'^ {6}"([^"]+)":', block, re.MULTILINE)


def test_the_ejabberd_access_rules_grant_what_the_mosquitto_acl_does():
    """The cluster's rules (hardware/ejabberd) follow the protocol's channels as fedge.acl does:
    each device channel one way, the retained topics; the rest the coordinator's. No shard uploads
    (an unsharded fleet's; `fedge provision ejabberd --shards K` adds K: test_shard_users.py)."""
    assert _ejabberd_grants("access_publish") == [f"fedge/v1/devices/%u/{k}" for k in DEVICE_WRITES] + ["#"]
    assert _ejabberd_grants("access_subscribe") == ([f"fedge/v1/devices/%u/{k}" for k in DEVICE_READS]
                                                     + [ANNOUNCE_TOPIC, MODEL_PARTS_FILTER, "#"])
