"""The transport's settings and decisions at their documented edges (mutation7-kernel):
max_packet_size 1024 is the least taken and caps what one publish carries below the broker's
own limit; keepalive_s 65535 (MQTT's 16-bit field) is taken; a topic of exactly 65535 UTF-8
bytes is valid; and a link that came up starts the next failure's log streak anew."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.transport.base import validate_topic
from fedge.edge_runtime.kernel.transport.connect_failure import ConnectFailures
from fedge.edge_runtime.kernel.transport.settings import MqttSettings


@pytest.mark.parametrize("key, ok, bad", [("max_packet_size", 1024, 1023), ("keepalive_s", 65535, 65536)])
def test_each_bound_takes_its_end_and_refuses_one_past(key, ok, bad):
    assert getattr(MqttSettings(**{key: ok}), key) == ok
    with pytest.raises(ConfigError, match=f"broker.{key} must"):
        MqttSettings(**{key: bad})


def test_max_packet_size_caps_a_publish_below_the_brokers_limit():
    from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport

    t = MqttTransport("pi", MqttSettings(max_packet_size=2048))
    try:
        # the 64 bytes kept for the fixed header, topic length, packet id and properties
        assert t.max_payload == 2048 - 64  # the broker announced nothing: MQTT's 256 MiB
        t._broker_max_packet = 1500  # as a CONNACK's Maximum Packet Size sets it
        assert t.max_payload == 1500 - 64
    finally:
        t.close()
    assert MqttTransport("pj", MqttSettings()).max_payload == (256 << 20) - 64


def test_a_topic_of_exactly_65535_bytes_is_valid():
    assert validate_topic("t" * 65535) == "t" * 65535
    with pytest.raises(ValueError, match="65536 bytes"):
        validate_topic("t" * 65536)


def test_a_failure_after_a_connection_is_logged_as_the_first_of_a_new_streak():
    url = "mqtt://broker.lan:1883"
    failures = ConnectFailures(MqttSettings(url=url))
    assert [bool(failures.record(0, url, ConnectionRefusedError())) for _ in range(3)] == [True, True, False]
    failures.connected()
    line = failures.record(0, url, ConnectionRefusedError())
    assert line is not None and line.endswith("(attempt 1)")
