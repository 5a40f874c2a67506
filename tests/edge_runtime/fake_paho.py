"""A stand-in for the paho client inside one MqttTransport, for unit tests of the transport's own
decisions (what it asks paho to do, what it makes of paho's callbacks) without a broker. It
records every call; the feature itself always runs on real paho (test_transport_mqtt.py)."""

from __future__ import annotations

import threading

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings

FLAGS = paho.ConnectFlags(session_present=False)


def code(packet: int, value: int) -> ReasonCode:
    return ReasonCode(packet, identifier=value)


class FakePaho:
    """Records calls in `calls`; publishes in `published` (topic, payload, qos, retain); SUBACKs
    granted from another thread, as paho's network thread would. `ack_first`: the PUBACK reason
    code delivered before publish() returns its mid (a fast broker beating the caller);
    `refuse`: filters whose SUBACK says 0x87, not authorized."""

    def __init__(self, owner: MqttTransport):
        self.owner = owner
        self.calls: list[tuple] = []
        self.published: list[tuple] = []
        self.mid = 0
        self.ack_first: int | None = None
        self.refuse: set[str] = set()

    def publish(self, topic, payload, qos=0, retain=False):
        self.mid += 1
        self.published.append((topic, bytes(payload), qos, retain))
        if self.ack_first is not None:
            self.owner._on_publish(self, None, self.mid, code(PacketTypes.PUBACK, self.ack_first), None)
        info = paho.MQTTMessageInfo(self.mid)
        info.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        return info

    def subscribe(self, topic_filter, options=None):
        self.mid += 1
        mid = self.mid
        self.calls.append(("subscribe", topic_filter, options.QoS))
        granted = [code(PacketTypes.SUBACK, 0x87 if topic_filter in self.refuse else options.QoS)]
        threading.Thread(target=self.owner._on_subscribe, args=(self, None, mid, granted, None)).start()
        return MQTTErrorCode.MQTT_ERR_SUCCESS, mid

    def unsubscribe(self, topic_filter):
        self.mid += 1
        self.calls.append(("unsubscribe", topic_filter))
        return MQTTErrorCode.MQTT_ERR_SUCCESS, self.mid

    def __getattr__(self, name):  # disconnect, loop_start, loop_stop, reconnect_delay_set, ...
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self.calls.append((name, *args, *kwargs.values()))


def faked(settings: MqttSettings | None = None, *, connected: bool = True, **kw) -> tuple[MqttTransport, FakePaho]:
    """A transport whose paho client is a FakePaho; `connected`: as after a CONNACK."""
    t = MqttTransport("pi-a", settings or MqttSettings(), **kw)
    t._client.loop_stop()  # the real one never started: give back its socket pair now
    fake = FakePaho(t)
    t._client = fake
    if connected:
        t._on_connect(fake, None, FLAGS, code(PacketTypes.CONNACK, 0), None)
        fake.calls.clear()
    return t, fake
