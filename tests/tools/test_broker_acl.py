"""What the shipped ACL and broker settings allow, checked with raw paho against real Mosquitto.

Devices pi-a and pi-b and the coordinator connect to a broker with Python-hashed passwords
(every successful connect here is also a check of the `$7$` hash). A negative check ("B's
message never arrives") ends with a sentinel sent after it: when the sentinel arrives, the
forged message would have arrived before it.
"""

from __future__ import annotations

import queue

import pytest

from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    MODEL_PARTS_FILTER,
    all_devices_topic,
    device_topic,
    model_part_topic,
)

pytestmark = pytest.mark.mosquitto

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code 135
ACCEPTED = (0x00, 0x10)  # success, or "no matching subscribers"
A, B = "pi-a", "pi-b"


def _until(client, payload: bytes) -> list[tuple[str, bytes, bool]]:
    """Messages up to and including the one with `payload`."""
    got = []
    while True:
        msg = client.expect()
        got.append(msg)
        if msg[1] == payload:
            return got


def test_forged_update_is_refused_and_never_reaches_the_coordinator(mosquitto_secured):
    coordinator = mosquitto_secured.client("coordinator")
    assert coordinator.subscribe(all_devices_topic("update")) == [1]
    a, b = mosquitto_secured.client(A), mosquitto_secured.client(B)

    assert a.publish(device_topic(A, "update"), b"genuine") in ACCEPTED
    assert b.publish(device_topic(A, "update"), b"forged") == NOT_AUTHORIZED  # MQTT 5 PUBACK says why
    assert b.publish(device_topic(B, "update"), b"sentinel") in ACCEPTED

    got = _until(coordinator, b"sentinel")
    assert [(t, p) for t, p, _ in got] == [(device_topic(A, "update"), b"genuine"),
                                          (device_topic(B, "update"), b"sentinel")]


def test_device_may_publish_only_its_own_device_to_coordinator_channels(mosquitto_secured):
    b = mosquitto_secured.client(B)
    for kind in ("checkin", "update", "status", "fetch"):
        assert b.publish(device_topic(B, kind), b"x") in ACCEPTED, kind
        assert b.publish(device_topic(A, kind), b"x") == NOT_AUTHORIZED, kind
    for kind in ("task", "ack", "artifact"):  # coordinator -> device, even its own
        assert b.publish(device_topic(B, kind), b"x") == NOT_AUTHORIZED, kind
    assert b.publish(ANNOUNCE_TOPIC, b"x", retain=True) == NOT_AUTHORIZED
    assert b.publish(model_part_topic(0), b"x", retain=True) == NOT_AUTHORIZED  # nobody can poison the model


def test_device_cannot_take_over_another_devices_client_id(mosquitto_secured):
    coordinator = mosquitto_secured.client("coordinator")
    coordinator.subscribe(all_devices_topic("update"))
    a = mosquitto_secured.client(A)
    impostor = mosquitto_secured.client(B, client_id=A)  # use_username_as_clientid makes it "pi-b"

    assert impostor.publish(device_topic(B, "update"), b"from-b") in ACCEPTED
    assert coordinator.expect()[1] == b"from-b"
    assert not a.disconnected.is_set()
    assert a.publish(device_topic(A, "update"), b"a-still-here") in ACCEPTED
    assert coordinator.expect()[1] == b"a-still-here"
    assert not a.disconnected.is_set()


@pytest.mark.parametrize("subscription", [
    all_devices_topic("update"),
    "#",
    "fedge/#",
    f"$share/fedge-coordinator/{all_devices_topic('update')}",
    f"$share/devices/{all_devices_topic('update')}",
    device_topic(A, "update"),
    device_topic(A, "task"),
    device_topic(A, "ack"),
    device_topic(A, "artifact"),
    all_devices_topic("task"),
])
def test_device_cannot_read_another_devices_traffic(mosquitto_secured, subscription):
    coordinator = mosquitto_secured.client("coordinator")
    coordinator.subscribe(all_devices_topic("update"))  # the design: a plain subscription
    a, b = mosquitto_secured.client(A), mosquitto_secured.client(B)
    # Mosquitto 2.0's acl_file does not check subscriptions (SUBACK grants them); reads are
    # checked per message, which is what keeps pi-a's traffic from pi-b.
    assert b.subscribe(subscription) == [1]
    b.subscribe(device_topic(B, "task"))  # its own channel, for the sentinel

    for i in range(4):
        assert a.publish(device_topic(A, "update"), f"update-{i}".encode()) in ACCEPTED
        for kind in ("task", "ack", "artifact"):
            assert coordinator.publish(device_topic(A, kind), f"{kind}-{i}".encode()) in ACCEPTED
    assert coordinator.publish(device_topic(B, "task"), b"sentinel") in ACCEPTED

    got = _until(b, b"sentinel")
    assert [(t, p) for t, p, _ in got] == [(device_topic(B, "task"), b"sentinel")]
    # and the coordinator's plain subscription saw all of pi-a's updates
    assert [coordinator.expect()[1] for _ in range(4)] == [f"update-{i}".encode() for i in range(4)]


def test_a_device_in_a_shared_group_drops_messages_but_never_reads_them(mosquitto_secured):
    """Why the coordinator must not use $share: Mosquitto 2.0.11 lets any client join any
    shared group (acl_file has no subscribe check), picks members round-robin, and when the
    picked member may not read the message it is dropped for the whole group, not passed on.
    The device learns nothing, but the coordinator silently loses updates."""
    group = f"$share/fedge-coordinator/{all_devices_topic('update')}"
    coordinator = mosquitto_secured.client("coordinator")
    coordinator.subscribe(group)
    a, b = mosquitto_secured.client(A), mosquitto_secured.client(B)
    b.subscribe(group)
    b.subscribe(device_topic(B, "task"))

    n = 8
    for i in range(n):
        assert a.publish(device_topic(A, "update"), f"update-{i}".encode()) in ACCEPTED
    assert coordinator.publish(device_topic(A, "update"), b"coordinator-sentinel") in ACCEPTED
    assert coordinator.publish(device_topic(B, "task"), b"sentinel") in ACCEPTED

    assert [p for _, p, _ in _until(b, b"sentinel")] == [b"sentinel"]
    # The coordinator's own sentinel may itself be picked for pi-b and dropped, so count what
    # did arrive rather than wait for it.
    seen = [p for _, p, _ in _drain(coordinator)]
    updates = [p for p in seen if p.startswith(b"update-")]
    assert len(updates) < n, ("Mosquitto delivered every update to the shared group although a device "
                              "joined it; the broker's behaviour changed, re-check the $share notes")


def test_devices_read_their_own_task_and_ack_and_the_retained_announcement(mosquitto_secured):
    coordinator = mosquitto_secured.client("coordinator")
    assert coordinator.publish(ANNOUNCE_TOPIC, b"announcement", retain=True) in ACCEPTED
    assert coordinator.publish(model_part_topic(0), b"part", retain=True) in ACCEPTED
    b = mosquitto_secured.client(B)
    b.subscribe(ANNOUNCE_TOPIC)
    assert b.expect() == (ANNOUNCE_TOPIC, b"announcement", True)
    b.subscribe(MODEL_PARTS_FILTER)
    assert b.expect() == (model_part_topic(0), b"part", True)
    for kind in ("task", "ack", "artifact"):
        b.subscribe(device_topic(B, kind))
        coordinator.publish(device_topic(B, kind), kind.encode())
        assert b.expect()[:2] == (device_topic(B, kind), kind.encode())


def test_forged_last_will_is_dropped(mosquitto_secured):
    coordinator = mosquitto_secured.client("coordinator")
    coordinator.subscribe(all_devices_topic("status"))
    forger = mosquitto_secured.client(B, will_topic=device_topic(A, "status"))
    forger.drop()
    honest = mosquitto_secured.client(A, will_topic=device_topic(A, "status"))
    honest.drop()  # its will is the sentinel: the forged one would have come first
    assert coordinator.expect()[:2] == (device_topic(A, "status"), b"offline")
    assert coordinator.received() == []


@pytest.mark.parametrize("username, password", [(A, "wrong"), ("stranger", "x"), (None, None)])
def test_bad_credentials_are_refused(mosquitto_secured, username, password):
    c = mosquitto_secured.client(username, password, connect=False)
    assert not c.connect()
    assert c.connack_code == NOT_AUTHORIZED  # 2.0.11 answers 135 even for a wrong password


def test_mtls_certificate_cn_is_the_acl_username(mosquitto_mtls):
    coordinator = mosquitto_mtls.client(mosquitto_mtls.certs["coordinator"])
    assert coordinator.connack_code == 0
    coordinator.subscribe(all_devices_topic("update"))
    a = mosquitto_mtls.client(mosquitto_mtls.certs[A], client_id="anything")
    assert a.connack_code == 0
    assert a.publish(device_topic(B, "update"), b"forged") == NOT_AUTHORIZED
    assert a.publish(device_topic(A, "update"), b"genuine") in ACCEPTED
    assert coordinator.expect()[:2] == (device_topic(A, "update"), b"genuine")


def test_mtls_refuses_clients_without_a_trusted_certificate(mosquitto_mtls, mtls_material):
    no_cert = mosquitto_mtls.client(None)
    rogue = mosquitto_mtls.client(mtls_material[3])  # CN pi-a, but from another CA
    for c in (no_cert, rogue):
        assert c.connack_code is None and not c.connected.is_set()


def _drain(client, quiet_s: float = 0.5) -> list[tuple[str, bytes, bool]]:
    """Messages until none arrives for `quiet_s` seconds."""
    got = []
    while True:
        try:
            got.append(client.messages.get(timeout=quiet_s))
        except queue.Empty:
            return got
