"""A round that closes while the link to the broker is down: the closed round's record must
still reach the caller (the loop's on_round and should_stop), and the announcement of the
new model goes out once the link is back.

Before, the announcement at close raised NotConnected after the commit, the loop caught it
and went on: the record never reached on_round or should_stop, so a service ran past its
`[service] rounds` and the MQTT simulator began an extra round.
"""

from __future__ import annotations

import threading

import pytest

from fedge.coordinator.loop import CoordinatorLoop
from fedge.edge_runtime.kernel.codec import decode_message
from fedge.edge_runtime.kernel.errors import NotConnected
from fedge.edge_runtime.kernel.protocol import ANNOUNCE_TOPIC, Announcement
from fedge.edge_runtime.kernel.transport.base import Transport
from tests.coordinator.fleet import make_fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


class LinkDropsAtClose(Transport):
    """Wraps a transport; while `down`, publishing the announcement raises NotConnected, as an
    MQTT transport does when its link dropped just as the round closed."""

    def __init__(self, inner: Transport):
        self.inner = inner
        self.down = False
        self.refused = 0
        self.connection_count = 1

    @property
    def client_id(self) -> str:
        return self.inner.client_id

    def publish(self, topic, payload, *, qos=1, retain=False):
        if self.down and topic == ANNOUNCE_TOPIC:
            self.refused += 1
            raise NotConnected("link dropped (test)")
        self.inner.publish(topic, payload, qos=qos, retain=retain)

    def subscribe(self, topic_filter, qos=1):
        self.inner.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter):
        self.inner.unsubscribe(topic_filter)

    def receive(self, timeout=0.0):
        return self.inner.receive(timeout)

    def close(self):
        self.inner.close()


def _ready_round(model, tmp_path):
    """A fleet whose round 1 has every update queued at the coordinator, not yet pumped."""
    fleet = make_fleet(model, tmp_path, sizes=(6, 9))
    c = fleet.coordinator
    c.transport = LinkDropsAtClose(c.transport)
    watcher = fleet.broker.connect("watcher")
    watcher.subscribe(ANNOUNCE_TOPIC)
    assert c.begin_round()
    for agent in fleet.agents:  # tasks in, updates out
        while agent.poll(0.0):
            pass
    while watcher.receive(0.0) is not None:
        pass
    return fleet, c, watcher


def _announcements(watcher) -> list[Announcement]:
    out = []
    while (msg := watcher.receive(0.0)) is not None:
        out.append(decode_message(msg.payload))
    return out


def test_tick_returns_the_committed_record_when_the_announcement_fails(model, tmp_path):
    fleet, c, watcher = _ready_round(model, tmp_path)
    while c.pump(0.0):
        pass
    c.transport.down = True
    record = c.tick()  # raised NotConnected before the fix
    assert record is not None and record.committed and record.round_id == 1
    assert c.state.version == 1 and c.round is None and list(c.history) == [record]
    assert c.transport.refused == 1 and _announcements(watcher) == []

    c.tick()  # link still down: the retry is deferred again, tick does not raise
    c.transport.down = False
    c.tick()  # link back: the deferred announcement goes out
    notes = _announcements(watcher)
    assert [(n.model_version, n.state) for n in notes] == [(1, "idle")]


def test_the_loop_sees_the_record_and_stops_at_its_round_count(model, tmp_path):
    fleet, c, watcher = _ready_round(model, tmp_path)
    c.transport.down = True  # the link is down when the round closes
    seen = []
    loop = CoordinatorLoop(c, poll_s=0.01, on_round=seen.append, should_stop=lambda r: c.state.version >= 1)
    loop._started = True  # start() ran in make_fleet
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    runner.join(timeout=30)  # generous: it returns in milliseconds when the record reaches should_stop
    if runner.is_alive():
        loop.stop()
        runner.join(timeout=10)
    assert [r.round_id for r in seen] == [1], "on_round must see the round that closed while the link was down"
    assert c.round is None and c.next_round_id == 2, "no extra round may begin after the last one"
    # The link comes back: the loop's reconnect hook re-announces the new model.
    c.transport.down = False
    c.on_reconnect()
    assert [(n.model_version, n.state) for n in _announcements(watcher)] == [(1, "idle")]


def test_a_coordinator_waiting_for_its_broker_says_so_at_doubling_intervals(caplog):
    """Every poll once logged "not started yet" at INFO: 20 lines a second while the broker was away."""
    import logging

    from fedge.coordinator.loop import CoordinatorLoop
    from fedge.edge_runtime.kernel.errors import NotConnected

    class Away:
        clock = None

        def start(self):
            raise NotConnected("client 'coordinator' has no link")

    loop = CoordinatorLoop(Away())
    with caplog.at_level(logging.INFO, logger="fedge.coordinator.loop"):
        assert not any(loop._start() for _ in range(20))
    said = [r.message for r in caplog.records if "not started yet" in r.message]
    assert [m.split("(try ")[1].split(")")[0] for m in said] == ["1", "2", "4", "8", "16"]
