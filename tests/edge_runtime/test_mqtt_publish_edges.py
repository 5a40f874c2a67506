"""MqttTransport's publish decisions at their edges (mutation9-mqtt), on a recording stand-in for
paho (fake_paho.py): a message of exactly max_message_bytes is sent; a payload that exactly
fills one packet (its topic counted in UTF-8 bytes, as MQTT encodes it) goes as one frame, one
byte more does not; a PUBACK that beats publish() returning its mid is neither waited for
again nor left unnamed; the first 8 refusals are named, the rest counted."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes

from fedge.edge_runtime.kernel.errors import PayloadTooLarge, PublishRefused
from fedge.edge_runtime.kernel.transport.chunks import is_chunk
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from tests.edge_runtime.fake_paho import code, faked

PACKET = 2048
ROOM = PACKET - 64  # max_payload: the 64 bytes kept for the fixed header, topic length, packet id, properties


def test_a_message_of_exactly_max_message_bytes_is_published():
    t, fake = faked(MqttSettings(max_message_bytes=5000, max_packet_size=PACKET))
    t.publish("fedge/v1/devices/pi-a/update", b"u" * 5000)
    assert all(is_chunk(p[1]) for p in fake.published) and len(fake.published) > 1
    with pytest.raises(PayloadTooLarge, match="5001 bytes"):
        t.publish("fedge/v1/devices/pi-a/update", b"u" * 5001)


@pytest.mark.parametrize("topic", ["fedge/v1/announce", "fedge/v1/modèle/ß"])
def test_a_payload_that_exactly_fills_one_packet_is_one_frame(topic):
    t, fake = faked(MqttSettings(max_packet_size=PACKET))
    room = ROOM - len(topic.encode("utf-8"))  # MQTT 5.0, 1.5.4: a topic is UTF-8, counted in bytes
    assert t.max_payload == ROOM
    t.publish(topic, b"r" * room, retain=True)
    assert fake.published == [(topic, b"r" * room, 1, True)]
    with pytest.raises(PayloadTooLarge, match="does not fit"):
        t.publish(topic, b"r" * (room + 1), retain=True)
    t.publish(topic, b"r" * (room + 1))  # not retained: chunked
    assert len(fake.published) == 3 and is_chunk(fake.published[1][1])


def test_a_puback_before_publish_returns_is_not_waited_for():
    t, fake = faked()
    fake.ack_first = 0  # success
    t.publish("fedge/v1/devices/pi-a/checkin", b"c")
    assert t.flush(0.2) is True


def test_a_refusal_before_publish_returns_names_its_topic():
    t, fake = faked()
    fake.ack_first = 0x87  # not authorized
    t.publish("fedge/v1/devices/pi-b/update", b"forged")
    with pytest.raises(PublishRefused, match=r"\(fedge/v1/devices/pi-b/update: Not authorized\)"):
        t.flush(0.2)


def test_the_first_eight_refusals_are_named_and_the_rest_counted():
    t, fake = faked()
    for i in range(10):
        t.publish(f"fedge/v1/x/{i}", b"x")
    for mid in range(1, 11):
        t._on_publish(fake, None, mid, code(PacketTypes.PUBACK, 0x87), None)
    with pytest.raises(PublishRefused) as info:
        t.flush(0.2)
    text = str(info.value)
    assert [i for i in range(10) if f"fedge/v1/x/{i}:" in text] == list(range(8))
    assert "refused 10 publish(es)" in text and "and 2 more" in text
    assert t.refused_publishes == 10 and t.flush(0.2) is True
