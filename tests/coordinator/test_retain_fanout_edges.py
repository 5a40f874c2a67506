"""RetainFanout's replay when its node drops again halfway through it (mutation6-transport)."""

from __future__ import annotations

from fedge.coordinator.retain_fanout import RetainFanout
from fedge.edge_runtime.kernel.errors import NotConnected
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from tests.coordinator.test_retain_fanout import ANNOUNCE, PART, Link, _retained


class FlakyLink(Link):
    """Refuses its next `fail` publishes while it says it is connected (a node lost mid-replay)."""

    fail = 0

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        if self.fail:
            self.fail -= 1
            raise NotConnected(f"{self.id}: node lost again")
        super().publish(topic, payload, qos=qos, retain=retain)


def test_a_replay_cut_short_is_tried_again_whole_at_the_next_look():
    node1, node2 = InMemoryBroker(), InMemoryBroker()
    mirror = FlakyLink(node2, "coordinator-retain-1")
    fan = RetainFanout(node1.connect("coordinator"), [mirror])
    fan.receive(0)
    mirror.connected = False
    fan.publish(ANNOUNCE, b"v2", retain=True)
    fan.publish(PART, b"part", retain=True)
    mirror.up()
    mirror.fail = 1  # the replay's first publish fails: nothing of the set reached node 2
    fan.receive(0)
    assert _retained(node2, "fedge/v1/#") == []
    fan.receive(0)  # same connection, nothing new: the whole set goes again
    assert [(m.topic, m.payload) for m in _retained(node2, "fedge/v1/#")] == [(ANNOUNCE, b"v2"), (PART, b"part")]
