"""Device ids at the edges of what a topic level can hold, through a real Mosquitto with no
passwords or ACL (the dev config, where any client may use any topic), from clients fedge did
not write. What Mosquitto refuses (a topic that is not UTF-8 as MQTT 5.0 1.5.4 defines it, or
holds a wildcard: 4.7.3) costs the publisher its link and never reaches the coordinator; an odd
id the broker passes is one more device, paced on its own topics, and an id that differs from
its topic's is refused by name. The coordinator's link never drops and the honest round commits."""

from __future__ import annotations

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import CheckIn, Pace
from tests.coordinator.fleet import copy_params
from tests.coordinator.mqtt_attackers import exported_rejections, open_broker, pump_until, start_fleet, wait_for
from tests.coordinator.rawmqtt import RawMqtt, _packet
from tests.coordinator.test_mqtt_third_party import _commit_honest_round

pytestmark = pytest.mark.mosquitto

CUT_BY_THE_BROKER = {  # topic bytes Mosquitto (2.0) closes the publisher's link for
    "not UTF-8": b"fedge/v1/devices/\xff\xfe/checkin",
    "an overlong encoding": b"fedge/v1/devices/\xc0\xaf/checkin",
    "a UTF-16 surrogate": b"fedge/v1/devices/\xed\xa0\x80/checkin",
    "NUL": b"fedge/v1/devices/a\x00b/checkin",
    "a C0 control": b"fedge/v1/devices/\x01/checkin",
    "a C1 control": "fedge/v1/devices/\x85/checkin".encode(),
    "a noncharacter": "fedge/v1/devices/\uffff/checkin".encode(),
    "wildcard +": b"fedge/v1/devices/+/checkin",
    "wildcard #": b"fedge/v1/devices/#",
}
# What it passes: a leading $, a space, 256 characters (the longest text field) of 2-byte
# UTF-8, a byte order mark, a right-to-left override, '..', the coordinator's own client id.
PASSED = ("$x", "x y", "ü" * 256, "\ufeff", "\u202eevil", "..", "coordinator")


def _publish_raw(topic: bytes, payload: bytes, host: str, port: int) -> bool:
    """A QoS 1 PUBLISH of these exact topic bytes; True if the broker acknowledged it, False if it cut the link."""
    client = RawMqtt(host, port, "raw", "")
    try:
        client.send(_packet(0x32, len(topic).to_bytes(2, "big") + topic + b"\x00\x01" + payload))  # packet id 1
        return client.read()[0] == 0x40  # PUBACK
    except ConnectionError:
        return False
    finally:
        client.close()


def test_device_ids_at_the_edges_of_a_topic_level(mosquitto, tmp_path):
    fleet = start_fleet(open_broker(mosquitto), tmp_path)
    c, host, port = fleet.coordinator, mosquitto.host, mosquitto.port
    odd: list[mqtt.Client] = []
    try:
        checkin = encode_message(CheckIn("a", num_examples=3))
        refused = {why: _publish_raw(topic, checkin, host, port) for why, topic in CUT_BY_THE_BROKER.items()}
        assert refused == dict.fromkeys(CUT_BY_THE_BROKER, False)

        heard: dict[str, list] = {d: [] for d in PASSED}
        for i, device in enumerate(PASSED):
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"odd-{i}", protocol=mqtt.MQTTv5)
            client.on_message = lambda _c, _u, m, d=device: heard[d].append(decode_message(m.payload))
            client.connect(host, port)
            client.loop_start()
            odd.append(client)
            client.subscribe(f"fedge/v1/devices/{device}/task", qos=1)
            away = CheckIn(device, eligible=False, reason="battery_low", num_examples=3)  # not picked to train
            client.publish(f"fedge/v1/devices/{device}/checkin", encode_message(away), qos=1).wait_for_publish(5)
        # a topic level longer than any id (its message's id is cut to fit), and an empty one
        too_long = encode_message(CheckIn("y" * 256))
        odd[0].publish("fedge/v1/devices/" + "y" * 257 + "/checkin", too_long, qos=1).wait_for_publish(5)
        odd[0].publish("fedge/v1/devices//checkin", encode_message(CheckIn("y")), qos=1).wait_for_publish(5)

        pump_until(c, lambda: len(c.registry) == 2 + len(PASSED) and sum(c.rejections.values()) == 2)
        while c.pump(0.0):
            pass
        assert c.rejections == {"unexpected_message": 2} and exported_rejections(c) == c.rejections
        assert all(d in c.registry for d in PASSED)
        wait_for(lambda: all(heard.values()), "a Pace on each odd device's own task topic")
        assert {d: [type(m) for m in got] for d, got in heard.items()} == {d: [Pace] for d in PASSED}
        assert all(got[0].device_id == d and got[0].reason == "ineligible" for d, got in heard.items())

        _commit_honest_round(fleet, copy_params(c.state.params), np.random.default_rng(8))
        links = [c.transport, *(d.t for d in fleet.devices)]
        assert [(t.connected, t.connection_count) for t in links] == [(True, 1)] * len(links)
    finally:
        for client in odd:
            client.disconnect()
            client.loop_stop()
        fleet.broker.close()
