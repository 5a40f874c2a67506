"""MqttTransport against a real Mosquitto: the Transport contract, chunking over the broker's
packet limit, Last Will on a cut link, reconnect after a broker kill -9, refused credentials,
and mutual TLS with a device certificate."""

from __future__ import annotations

import gc
import os
import socket
import time

import pytest

from fedge.edge_runtime.kernel.errors import BrokerRefused, ConnectionLost, NotConnected, TransportError
from fedge.edge_runtime.kernel.transport.base import Message
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.tools.broker import BrokerConfig
from tests.high_fds import descriptors_taken_up_to

FAST = dict(reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=5)


def _settings(broker, **kw) -> MqttSettings:
    return MqttSettings(url=broker.url, **{**FAST, **kw})


def _next(transport, timeout=5.0) -> Message:
    msg = transport.receive(timeout)
    assert msg is not None, "nothing arrived"
    return msg


def test_publish_subscribe_retain_and_clean_close(mosquitto):
    a = MqttTransport("a", _settings(mosquitto)).connect()
    b = MqttTransport("b", _settings(mosquitto)).connect()
    b.publish("fedge/v1/announce", b"retained", retain=True)
    assert b.flush(5)
    a.subscribe("fedge/v1/#")
    assert _next(a) == Message("fedge/v1/announce", b"retained", retain=True)
    b.publish("fedge/v1/devices/b/update", b"live")
    assert _next(a) == Message("fedge/v1/devices/b/update", b"live", retain=False)
    a.close()
    a.close()  # idempotent
    with pytest.raises(TransportError):
        a.receive(0)
    with pytest.raises(TransportError):
        a.publish("x", b"")
    b.close()


def test_a_client_whose_descriptors_are_past_1023_connects(mosquitto):
    """paho's loop waited in select(), which refuses descriptors >= 1024: paho took that for a
    lost link and reconnected forever, logging nothing, so a client in a process holding ~1,000
    open files never connected (9 devices of the 200-device ejabberd drill). poll_select.py."""
    with descriptors_taken_up_to(1100):
        a = MqttTransport("a", _settings(mosquitto)).connect()
        a.subscribe("fedge/v1/#")
        a.publish("fedge/v1/devices/a/checkin", b"hello")
        assert _next(a) == Message("fedge/v1/devices/a/checkin", b"hello", retain=False)
        a.close()


def test_close_and_abort_give_back_the_wake_up_socket_pair_at_once(mosquitto):
    """paho leaves the socket pair that wakes its thread to __del__, and a client is in a
    reference cycle with the transport's callbacks: a closed transport held two descriptors
    until a full garbage collection, hundreds in a test run (paho_client.py)."""
    for stop in (MqttTransport.close, MqttTransport.abort):
        t = MqttTransport("a", _settings(mosquitto)).connect()
        pair = [(fd, os.fstat(fd).st_ino) for fd in (t._client._sockpairR.fileno(), t._client._sockpairW.fileno())]
        gc.disable()  # the point: given back by close/abort, not by the collector
        try:
            stop(t)
            still_open = [(fd, ino) for fd, ino in pair if _inode(fd) == ino]
        finally:
            gc.enable()
        assert still_open == [], stop.__name__


def test_a_publish_racing_close_is_not_connected_not_a_raw_socket_error(mosquitto):
    """close() on another thread releases the wake-up pair between paho's check that it is there
    and its write to it: the publish met a closed socket (OSError) or None (AttributeError),
    outside the transport's errors. Modelled here: the loop stopped (the pair released), the link
    still up as paho sees it, and the write finding a closed socket."""
    t = MqttTransport("a", _settings(mosquitto)).connect()
    try:
        t._client.loop_stop()
        closed = socket.socket()
        closed.close()
        t._client._sockpairW = closed  # what the racing publish held when close() ran
        with pytest.raises(NotConnected, match="dropped while publishing"):
            t.publish("fedge/x", b"1", qos=1)
    finally:
        t._client._sockpairW = None
        t.abort()


def _inode(fd: int) -> int | None:
    try:
        return os.fstat(fd).st_ino
    except OSError:  # closed
        return None


def test_messages_over_the_packet_limit_are_chunked_and_reassembled(mosquitto_factory):
    broker = mosquitto_factory(BrokerConfig(max_packet_size=4096, persistence=False))
    a = MqttTransport("a", _settings(broker)).connect()
    b = MqttTransport("b", _settings(broker)).connect()
    assert b.max_payload < 4096  # learned from the broker's CONNACK
    a.subscribe("big/#")
    payload = os.urandom(50_000)
    b.publish("big/one", payload)
    b.publish("big/two", b"small")
    assert _next(a).payload == payload
    assert _next(a).payload == b"small"
    with pytest.raises(Exception, match="does not fit"):
        b.publish("big/retained", payload, retain=True)
    a.close(), b.close()


def test_cut_link_publishes_the_last_will(mosquitto):
    watcher = MqttTransport("w", _settings(mosquitto)).connect()
    watcher.subscribe("fedge/v1/devices/+/status")
    dev = MqttTransport("dev", _settings(mosquitto), will=Message("fedge/v1/devices/dev/status", b"gone")).connect()
    dev.abort()
    assert _next(watcher).payload == b"gone"
    watcher.close()


def test_reconnects_after_broker_kill9_and_resubscribes(mosquitto_factory):
    broker = mosquitto_factory(BrokerConfig(persistence=False))
    a = MqttTransport("a", _settings(broker)).connect()
    a.subscribe("t/#")
    broker.kill9()
    with pytest.raises(ConnectionLost):  # reported once, never silent
        a.receive(5)
    with pytest.raises(NotConnected):
        a.publish("t/x", b"while down")
    broker.restart()
    deadline = time.monotonic() + 15
    while a.connection_count < 2 and time.monotonic() < deadline:
        assert a.receive(0.1) is None
    assert a.connection_count == 2 and a.connected
    b = MqttTransport("b", _settings(broker)).connect()
    b.publish("t/after", b"back")
    assert _next(a).payload == b"back"  # the subscription was restored on reconnect
    a.close(), b.close()


def test_wrong_password_is_refused_with_a_named_error(mosquitto_secured):
    broker = mosquitto_secured.process
    with pytest.raises(BrokerRefused):
        MqttTransport("pi-a", _settings(broker, username="pi-a", password="wrong")).connect()
    ok = MqttTransport("pi-a",
                       _settings(broker, username="pi-a", password=mosquitto_secured.passwords["pi-a"])).connect()
    ok.subscribe("fedge/v1/devices/pi-a/task")
    ok.close()


def test_mutual_tls_with_a_device_certificate(mosquitto_mtls):
    cert, key = mosquitto_mtls.certs["pi-a"]
    settings = MqttSettings(url=mosquitto_mtls.process.url, ca_file=str(mosquitto_mtls.ca), cert_file=str(cert),
                            key_file=str(key), **FAST)
    assert settings.endpoint()[2]  # mqtts
    dev = MqttTransport("pi-a", settings).connect()
    dev.subscribe("fedge/v1/devices/pi-a/task")
    coord_cert, coord_key = mosquitto_mtls.certs["coordinator"]
    coord = MqttTransport("coordinator", MqttSettings(url=mosquitto_mtls.process.url, ca_file=str(mosquitto_mtls.ca),
                                                      cert_file=str(coord_cert), key_file=str(coord_key),
                                                      **FAST)).connect()
    coord.publish("fedge/v1/devices/pi-a/task", b"task")
    assert _next(dev).payload == b"task"
    dev.close(), coord.close()
    # Without a client certificate the broker refuses the TLS handshake.
    bare = MqttTransport("pi-b", MqttSettings(url=mosquitto_mtls.process.url, ca_file=str(mosquitto_mtls.ca), **FAST))
    with pytest.raises(TransportError):
        bare.connect(timeout=2)
    bare.close()
