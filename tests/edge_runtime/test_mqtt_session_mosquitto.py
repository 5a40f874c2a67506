"""What the MQTT transport promises about sessions and the Last Will, checked against a real
Mosquitto (mutation9-mqtt): a device that was offline finds the QoS 1 task sent meanwhile
(clean_start false, a session expiry, a QoS 1 subscription: Mosquitto queues no QoS 0 messages
for an offline client) and the CONNACK says the session was there; the Will is retained and
QoS 1, which a raw paho subscriber arriving later sees in the retained copy's own flags."""

from __future__ import annotations

from fedge.edge_runtime.kernel.transport.base import Message
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from tests.mqtt_fixtures import RawClient

TASK = "fedge/v1/devices/pi-a/task"
STATUS = "fedge/v1/devices/pi-a/status"


def _settings(broker) -> MqttSettings:
    return MqttSettings(url=broker.url, reconnect_min_s=0.1, reconnect_max_s=0.5, connect_timeout_s=5)


def test_an_offline_device_finds_the_qos1_task_sent_meanwhile(mosquitto):
    device = MqttTransport("pi-a", _settings(mosquitto)).connect()
    assert device.session_present is False  # a new session
    device.subscribe(TASK, qos=1)
    device.close()  # DISCONNECT: the broker keeps the session for session_expiry_s
    coordinator = MqttTransport("coordinator", _settings(mosquitto)).connect()
    try:
        coordinator.publish(TASK, b"task 1", qos=1)
        assert coordinator.flush(5)
        again = MqttTransport("pi-a", _settings(mosquitto)).connect()
        try:
            assert again.session_present is True
            assert again.receive(5) == Message(TASK, b"task 1", retain=False)  # no subscribe: the session's
        finally:
            again.close()
    finally:
        coordinator.close()


def test_the_last_will_is_retained_at_qos1(mosquitto):
    watcher = MqttTransport("coordinator", _settings(mosquitto)).connect()
    watcher.subscribe(STATUS, qos=1)
    device = MqttTransport("pi-a", _settings(mosquitto), will=Message(STATUS, b"link lost", retain=True)).connect()
    device.abort()
    assert watcher.receive(5) == Message(STATUS, b"link lost", retain=False)  # live: published, so retained now
    watcher.close()
    late = RawClient(mosquitto.host, mosquitto.port, client_id="late")
    try:
        assert late.connect() and late.subscribe(STATUS, qos=1) == [1]  # a copy comes at the QoS it was sent with
        assert late.expect() == (STATUS, b"link lost", True) and late.qos == [1]
    finally:
        late.close()
