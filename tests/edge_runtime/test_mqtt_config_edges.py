"""The reconnect backoff and the broker url at their documented edges (mutation9-mqtt): equal
min and max, a factor of 1 and a device that failed for days (attempt 100,000) are valid and
bounded; ssl:// is TLS and mqtts:// without a port dials 8883 (IANA's port for MQTT over TLS);
TLS files under a plain url are refused, never silently ignored."""

from __future__ import annotations

import random

import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.transport.backoff import Backoff
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings


def test_equal_min_and_max_is_a_fixed_window_the_settings_and_the_transport_accept():
    b = Backoff(1.0, 1.0)
    rng = random.Random(0)
    assert all(0.5 <= b.delay(a, rng) <= 1.0 for a in range(50))
    t = MqttTransport("pi-a", MqttSettings(reconnect_min_s=1.0, reconnect_max_s=1.0))  # ConfigError-free, no crash
    t.close()


def test_a_factor_of_one_keeps_every_window_at_the_first():
    assert {Backoff(0.5, 30.0, factor=1.0).bounds(a) for a in range(100)} == {(0.25, 0.5)}
    with pytest.raises(ValueError, match="factor"):
        Backoff(0.5, 30.0, factor=0.99)


def test_a_device_that_failed_for_days_still_gets_a_bounded_delay():
    b = Backoff(0.5, 30.0)
    assert b.bounds(100_000) == (0.25, 30.0)  # 2.0 ** 100000 would overflow a float
    assert 0.25 <= b.delay(100_000, random.Random(0)) <= 30.0


def test_ssl_scheme_is_tls_and_mqtts_defaults_to_8883():
    assert MqttSettings(url="ssl://broker.lan:8884").endpoint() == ("broker.lan", 8884, True)
    assert MqttSettings(url="mqtts://broker.lan").endpoint() == ("broker.lan", 8883, True)
    assert MqttSettings(url="mqtt://broker.lan").endpoint() == ("broker.lan", 1883, False)
    assert MqttSettings(url="tcp://broker.lan").endpoint() == ("broker.lan", 1883, False)


@pytest.mark.parametrize("files", [dict(ca_file="/etc/fedge/ca.crt"),
                                   dict(cert_file="/etc/fedge/pi.crt", key_file="/etc/fedge/pi.key")])
def test_tls_files_under_a_plain_url_are_refused(files):
    with pytest.raises(ConfigError, match="TLS files given but url 'mqtt://broker.lan:1883' is not mqtts://"):
        MqttSettings(url="mqtt://broker.lan:1883", **files)
