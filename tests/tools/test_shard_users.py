"""The shard workers' broker users (tools/broker/shard_users.py): their ACL blocks, the reserved
fedge-shard- prefix, `fedge provision coordinator --shards K`, and what the users may do on a
real Mosquitto (the drill that runs a fleet on them: tests/coordinator/test_service_shards_provisioned.py)."""

from __future__ import annotations

import difflib

import pytest

from fedge.edge_runtime.kernel.configfile import load_toml
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    all_devices_topic,
    device_topic,
    shard_update_topic,
    shard_updates_filter,
)
from fedge.tools import provision
from fedge.tools.broker.config import BrokerConfig, acl_text
from fedge.tools.broker.errors import ReservedUsername
from fedge.tools.broker.passwd import generate_password, read_password_file, upsert_password, verify_password
from fedge.tools.broker.shard_users import is_shard_user, shard_users
from tests.mqtt_fixtures import SecuredBroker
from tests.tools.test_broker import _acl_rules
from tests.tools.test_provision import _cli

NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers"


def test_the_acl_grants_the_devices_k_upload_topics_and_each_worker_its_shards_uploads_and_acks():
    rules = _acl_rules(acl_text(2))
    assert rules[:len(_acl_rules(acl_text()))] == _acl_rules(acl_text())  # the shipped ACL, then the blocks
    assert rules[len(_acl_rules(acl_text())):] == [
        ("pattern", "write", shard_update_topic(0, "%u")), ("pattern", "write", shard_update_topic(1, "%u")),
        ("user", "fedge-shard-0"), ("topic", "read", shard_updates_filter(0)),
        ("topic", "write", all_devices_topic("ack")),
        ("user", "fedge-shard-1"), ("topic", "read", shard_updates_filter(1)),
        ("topic", "write", all_devices_topic("ack"))]
    assert acl_text(0) == acl_text()


@pytest.mark.parametrize("reserved", ["coordinator", "fedge-shard-0", "fedge-shard-17", "fedge-shard-x"])
def test_device_ids_may_not_name_a_coordinator_process(reserved):
    with pytest.raises(ReservedUsername, match="pick another device id"):
        provision.validate_device_id(reserved)


def test_shard_user_names():
    assert shard_users(3) == ["fedge-shard-0", "fedge-shard-1", "fedge-shard-2"]
    assert is_shard_user("fedge-shard-1023") and not any(map(is_shard_user, ["fedge-shard-1024", "fedge-shard-01",
                                                                             "fedge-shard-", "coordinator"]))
    with pytest.raises(ConfigError):
        shard_users(-1)


def test_provision_coordinator_with_shards_writes_each_workers_credentials(tmp_path):
    pw, out = tmp_path / "etc" / "passwd", tmp_path / "creds"
    assert _cli("coordinator", "--passwd-file", str(pw), "--out", str(out), "--shards", "2") == 0
    users = read_password_file(pw)
    assert sorted(users) == ["coordinator", "fedge-shard-0", "fedge-shard-1"]
    for user in users:
        creds = load_toml(out / f"{user}.toml")["broker"]
        assert creds["username"] == user and verify_password(creds["password"], users[user])
    (out / "fedge-shard-1.toml").unlink()
    with pytest.raises(ConfigError, match="--force"):  # coordinator.toml exists: nothing is rewritten
        _cli("coordinator", "--passwd-file", str(pw), "--out", str(out), "--shards", "2")
    assert read_password_file(pw) == users


def test_provision_coordinator_with_shards_issues_each_worker_a_certificate(tmp_path):
    pytest.importorskip("cryptography")
    from fedge.tools.broker.certs import common_name

    assert _cli("ca", "--out", str(tmp_path / "ca")) == 0
    out = tmp_path / "bundle"
    assert _cli("coordinator", "--cert", "--ca-dir", str(tmp_path / "ca"), "--out", str(out), "--shards", "1") == 0
    creds = load_toml(out / "fedge-shard-0.toml")["broker"]
    assert common_name(out / "fedge-shard-0.crt") == "fedge-shard-0" and creds["cert_file"].endswith("0.crt")


def test_provision_ejabberd_grants_the_devices_the_k_shard_topics_only(tmp_path):
    """The shipped ejabberd rules granted fedge/v1/shard/+/devices/%u/update, the wildcard the
    Mosquitto ACL leaves out (a device could park retained messages on made-up shards); the
    written file grants the K shards' topics, as `provision broker --shards K` does for Mosquitto,
    and is otherwise the shipped one. Live on a cluster: tests/edge_runtime/test_transport_ejabberd_shards.py."""
    from fedge.tools.broker.ejabberd_shards import shipped_config
    from tests.tools.test_broker import _ejabberd_grants

    out = tmp_path / "etc"
    assert _cli("ejabberd", "--out", str(out), "--shards", "3") == 0
    text, shipped = (out / "ejabberd.yml").read_text(), shipped_config().read_text()
    grants, plain = _ejabberd_grants("access_publish", text), _ejabberd_grants("access_publish", shipped)
    assert grants == plain[:-1] + [shard_update_topic(k, "%u") for k in range(3)] + ["#"]
    assert _ejabberd_grants("access_subscribe", text) == _ejabberd_grants("access_subscribe", shipped)
    changed = [d for d in difflib.ndiff(shipped.splitlines(), text.splitlines()) if d[:2] in ("+ ", "- ")]
    assert changed == [f"+ {line}" for k in range(3)
                       for line in (f'      "{shard_update_topic(k, "%u")}":', "        - allow")]
    with pytest.raises(ConfigError, match="--force"):  # another K over it: the operator's file is kept
        _cli("ejabberd", "--out", str(out), "--shards", "2")
    assert (out / "ejabberd.yml").read_text() == text
    with pytest.raises(SystemExit) as refused:  # argparse's range (cli_args.int_in), before any file
        _cli("ejabberd", "--out", str(tmp_path / "bad"), "--shards", "-1")
    assert refused.value.code == 2 and not (tmp_path / "bad").exists()


@pytest.fixture
def shard_broker(mosquitto_factory, tmp_path):
    passwd = tmp_path / "passwd"
    passwords = {user: generate_password() for user in ("coordinator", "pi-a", *shard_users(2))}
    for user, password in passwords.items():
        upsert_password(passwd, user, password)
    broker = SecuredBroker(mosquitto_factory(BrokerConfig(password_file=str(passwd), shards=2)), passwd, passwords)
    yield broker
    for c in broker.clients:
        c.close()


def test_a_worker_reads_its_shard_and_acks_devices_and_nothing_else(shard_broker):
    worker, other = shard_broker.client("fedge-shard-0"), shard_broker.client("fedge-shard-1")
    device, leader = shard_broker.client("pi-a"), shard_broker.client("coordinator")
    assert worker.subscribe(shard_updates_filter(0)) == [1] and worker.subscribe(shard_updates_filter(1)) == [1]
    device.subscribe(device_topic("pi-a", "ack"))
    assert device.publish(shard_update_topic(1, "pi-a"), b"to-1") in ACCEPTED
    assert device.publish(shard_update_topic(0, "pi-a"), b"to-0") in ACCEPTED
    assert worker.expect() == (shard_update_topic(0, "pi-a"), b"to-0", False)  # shard 1's never reached it
    assert worker.publish(device_topic("pi-a", "ack"), b"ack") in ACCEPTED
    assert device.expect()[1] == b"ack"
    for topic in (device_topic("pi-a", "task"), device_topic("pi-a", "update"), shard_update_topic(0, "pi-a"),
                  ANNOUNCE_TOPIC):  # the leader's topics, and the devices'
        assert worker.publish(topic, b"x") == NOT_AUTHORIZED, topic
    assert other.publish(device_topic("pi-a", "ack"), b"ack-1") in ACCEPTED
    assert leader.publish(device_topic("pi-a", "ack"), b"from-leader") in ACCEPTED  # the leader keeps its rights
    assert [device.expect()[1] for _ in range(2)] == [b"ack-1", b"from-leader"]


def test_a_device_may_upload_to_the_k_shards_and_leave_nothing_on_a_made_up_one(shard_broker):
    """The devices' shard grant once read shard/+: a device could leave a retained message on
    fedge/v1/shard/<any name>/devices/<itself>/update, and so fill the broker's retained store
    (and its persistence file) without bound. Now it may write the K shards' topics only (on an
    unsharded broker none: test_broker.py's list of the shipped ACL's rules)."""
    device, leader = shard_broker.client("pi-a"), shard_broker.client("coordinator")
    for shard in (0, 1):
        assert device.publish(shard_update_topic(shard, "pi-a"), b"x") in ACCEPTED
    for made_up in ("2", "junk", "0x" + "9" * 5000):
        topic = f"fedge/v1/shard/{made_up}/devices/pi-a/update"
        assert device.publish(topic, b"x" * 1000, retain=True) == NOT_AUTHORIZED, made_up
    assert leader.subscribe("fedge/v1/shard/#") == [1]
    assert leader.publish(shard_update_topic(0, "pi-a"), b"sentinel") in ACCEPTED
    assert leader.expect() == (shard_update_topic(0, "pi-a"), b"sentinel", False)  # nothing retained came first
