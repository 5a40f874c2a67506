"""RetainFanout on two in-memory brokers standing in for two cluster nodes that do not share
retained messages (ejabberd's behaviour; the real cluster is in tests/edge_runtime/test_transport_ejabberd.py)."""

from __future__ import annotations

import itertools

from fedge.coordinator.retain_fanout import RetainFanout
from fedge.edge_runtime.kernel.errors import NotConnected
from fedge.edge_runtime.kernel.transport.base import Message
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker

_PROBES = itertools.count()
ANNOUNCE, PART, TASK = "fedge/v1/announce", "fedge/v1/model/0", "fedge/v1/devices/d/task"


class Link:
    """A mirror link to one node that can be down, counting (re)connects like MqttTransport."""

    def __init__(self, broker: InMemoryBroker, client_id: str):
        self.broker, self.id = broker, client_id
        self.inner = broker.connect(client_id)
        self.connection_count, self.connected = 1, True

    @property
    def client_id(self) -> str:
        return self.id

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if not self.connected:
            raise NotConnected(f"{self.id}: node down")
        self.inner.publish(topic, payload, qos=qos, retain=retain)

    def up(self) -> None:
        self.connected, self.connection_count = True, self.connection_count + 1

    def close(self) -> None:
        self.inner.close()


def _retained(broker: InMemoryBroker, topic_filter: str) -> list[Message]:
    """What a device subscribing now on this node gets."""
    probe = broker.connect(f"probe-{next(_PROBES)}")
    probe.subscribe(topic_filter)
    got = []
    while (msg := probe.receive(0)) is not None:
        got.append(msg)
    probe.close()
    return got


def test_retained_messages_reach_every_node_and_the_rest_only_the_main_one():
    node1, node2 = InMemoryBroker(), InMemoryBroker()
    fan = RetainFanout(node1.connect("coordinator"), [Link(node2, "coordinator-retain-1")])
    fan.publish(ANNOUNCE, b"v1", retain=True)
    fan.publish(PART, b"part", retain=True)
    fan.publish(TASK, b"task")
    for node in (node1, node2):
        assert [(m.topic, m.payload, m.retain) for m in _retained(node, "fedge/v1/#")] == [
            (ANNOUNCE, b"v1", True), (PART, b"part", True)]
    assert node2.stats("coordinator-retain-1").messages_published == 2  # the task went through node 1 only


def test_a_node_that_was_down_gets_the_latest_retained_set_when_its_link_is_back():
    node1, node2 = InMemoryBroker(), InMemoryBroker()
    mirror = Link(node2, "coordinator-retain-1")
    fan = RetainFanout(node1.connect("coordinator"), [mirror])
    fan.receive(0)  # first look: the mirror's current connection is counted, nothing to replay
    fan.publish(PART, b"old part", retain=True)
    mirror.connected = False  # node 2 goes down: these publishes do not reach it, and nothing raises
    fan.publish(ANNOUNCE, b"v2", retain=True)
    fan.publish(PART, b"", retain=True)  # a deletion must be replayed too
    assert [m.payload for m in _retained(node2, "fedge/v1/#")] == [b"old part"]
    mirror.up()  # node 2 is back (a new connection): the next receive replays the latest of each topic
    assert fan.receive(0) is None
    assert [(m.topic, m.payload) for m in _retained(node2, "fedge/v1/#")] == [(ANNOUNCE, b"v2")]
    assert [(m.topic, m.payload) for m in _retained(node1, "fedge/v1/#")] == [(ANNOUNCE, b"v2")]
