"""MqttTransport's link decisions at their edges (mutation9-mqtt), on a recording stand-in for
paho (fake_paho.py): every CONNACK refusal MQTT 5 calls final ends connect() at once; a
reconnect resubscribes what the owner still holds, at its QoS, and never what the broker
refused; a connection restarts the backoff at its first window; a failed attempt moves to the
next node, host and port; a CONNACK refusal is no lost link; close() says DISCONNECT (no Last
Will) and every later receive raises."""

from __future__ import annotations

import random
import re

import pytest
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes

from fedge.edge_runtime.kernel.errors import BrokerRefused, ConnectionLost, NotConnected, TransportError
from fedge.edge_runtime.kernel.protocol import MODEL_PARTS_FILTER
from fedge.edge_runtime.kernel.transport.backoff import Backoff
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from tests.edge_runtime.fake_paho import FLAGS, code, faked


# MQTT 5.0, 3.2.2.2: 0x85 client identifier not valid, 0x86 bad user name or password,
# 0x87 not authorized, 0x8A banned, 0x8C bad authentication method. Retrying cannot help.
@pytest.mark.parametrize("refusal", [0x85, 0x86, 0x87, 0x8A, 0x8C])
def test_a_connack_refusal_that_retrying_cannot_mend_ends_connect_at_once(refusal):
    t, fake = faked(connected=False)
    t._on_connect(fake, None, FLAGS, code(PacketTypes.CONNACK, refusal), None)
    with pytest.raises(BrokerRefused, match="refused client 'pi-a'"):  # a refusal retried: TransportError at 1 s
        t.connect(timeout=1.0)
    assert t.closed


def test_a_busy_broker_is_retried_until_the_timeout():
    t, fake = faked(connected=False)
    t._on_connect(fake, None, FLAGS, code(PacketTypes.CONNACK, 0x88), None)  # server unavailable
    with pytest.raises(TransportError, match="no connection") as info:
        t.connect(timeout=0.1)
    assert not isinstance(info.value, BrokerRefused) and not t.closed


def test_a_reconnect_resubscribes_what_the_owner_holds_at_its_qos():
    t, fake = faked()
    t.subscribe("fedge/v1/devices/pi-a/task", qos=1)
    t.subscribe("fedge/v1/devices/pi-a/ack", qos=1)
    t.subscribe("fedge/v1/announce", qos=0)
    t.unsubscribe("fedge/v1/devices/pi-a/ack")
    assert fake.calls[:3] == [("subscribe", "fedge/v1/devices/pi-a/task", 1),
                              ("subscribe", "fedge/v1/devices/pi-a/ack", 1), ("subscribe", "fedge/v1/announce", 0)]
    fake.calls.clear()
    t._on_disconnect(fake, None, FLAGS, code(PacketTypes.DISCONNECT, 0), None)
    t._on_connect(fake, None, FLAGS, code(PacketTypes.CONNACK, 0), None)
    subscribed = [c for c in fake.calls if c[0] == "subscribe"]
    assert subscribed == [("subscribe", "fedge/v1/devices/pi-a/task", 1), ("subscribe", "fedge/v1/announce", 0)]


def test_a_refused_subscription_raises_and_is_not_replayed():
    t, fake = faked()
    fake.refuse.add("fedge/v1/devices/pi-b/task")
    with pytest.raises(BrokerRefused, match="refused subscription 'fedge/v1/devices/pi-b/task': Not authorized"):
        t.subscribe("fedge/v1/devices/pi-b/task")
    fake.calls.clear()
    t._on_connect(fake, None, FLAGS, code(PacketTypes.CONNACK, 0), None)
    assert [c for c in fake.calls if c[0] == "subscribe"] == []


def test_a_connection_restarts_the_backoff_at_its_first_window():
    """After hours of failed attempts the counter is high; a link that came up and dropped again
    must be retried within the first window (backoff.py), not the longest one."""
    first = Backoff(0.5, 30.0).bounds(0)
    for seed in range(20):
        t, fake = faked(connected=False, rng=random.Random(seed))
        for _ in range(12):
            t._on_connect_fail(fake, None)
        t._on_connect(fake, None, FLAGS, code(PacketTypes.CONNACK, 0), None)
        delays = [c[1:] for c in fake.calls if c[0] == "reconnect_delay_set"]
        assert first[0] <= delays[-1][0] == delays[-1][1] <= first[1]


def test_a_failed_attempt_moves_to_the_next_node_host_and_port():
    settings = MqttSettings(url="mqtt://127.0.0.1:1883", fallback_urls=("mqtt://127.0.0.2:1884",))
    t = MqttTransport("pi-a", settings)  # connect_async: no I/O until connect()
    try:
        seen = []
        for _ in range(3):
            t._on_connect_fail(t._client, None)
            seen.append((t._client.host, t._client.port, repr(t)))
        assert [s[:2] for s in seen] == [("127.0.0.2", 1884), ("127.0.0.1", 1883), ("127.0.0.2", 1884)]
        assert "mqtt://127.0.0.2:1884" in seen[0][2] and "mqtt://127.0.0.1:1883" in seen[1][2]
    finally:
        t.close()


def test_a_connack_refusal_is_not_a_lost_link_and_a_lost_link_is_said_once():
    t, fake = faked(connected=False)
    t._on_connect(fake, None, FLAGS, code(PacketTypes.CONNACK, 0x88), None)
    t._on_disconnect(fake, None, FLAGS, code(PacketTypes.DISCONNECT, 0x80), None)  # paho, after the refusal
    assert t.receive(0) is None
    t._on_connect(fake, None, FLAGS, code(PacketTypes.CONNACK, 0), None)
    t._on_disconnect(fake, None, FLAGS, code(PacketTypes.DISCONNECT, 0x8B), None)
    with pytest.raises(ConnectionLost):
        t.receive(0)
    assert t.receive(0) is None


def test_close_says_disconnect_and_every_later_receive_raises():
    t, fake = faked()
    t.close()
    names = [c[0] for c in fake.calls]
    assert "disconnect" in names and names.index("disconnect") < names.index("loop_stop")
    for _ in range(3):
        with pytest.raises(TransportError, match="closed"):
            t.receive(0)


def test_the_client_paho_runs_has_the_settings_keepalive_and_no_queue_limit():
    t = MqttTransport("pi-a", MqttSettings(keepalive_s=17))
    try:
        assert t._client.keepalive == 17  # paho's own property
        assert t._client.max_queued_messages == 0  # unbounded: the transport bounds what it publishes
    finally:
        t.close()


def test_an_unsubscribe_paho_could_not_send_raises_not_connected():
    """The link dropped between the transport's check and paho's UNSUBSCRIBE: paho answered
    MQTT_ERR_NO_CONN and unsubscribe() returned as if done, so delivery.sync_subscription took
    the model parts as unsubscribed and never tried again, while the broker's persistent session
    kept sending them. Real paho, never connected; the transport believes the link is up."""
    t = MqttTransport("pi-a", MqttSettings())
    try:
        assert t._client.unsubscribe(MODEL_PARTS_FILTER)[0] == MQTTErrorCode.MQTT_ERR_NO_CONN  # paho's own answer
        t._connected.set()
        with pytest.raises(NotConnected, match=f"unsubscribe '{re.escape(MODEL_PARTS_FILTER)}' failed"):
            t.unsubscribe(MODEL_PARTS_FILTER)
    finally:
        t.close()
