"""In-memory broker: MQTT topic rules, retained messages, takeover, wills, threads, counters."""

from __future__ import annotations

import threading
import time

import pytest

from fedge.edge_runtime.kernel.errors import PayloadTooLarge, TransportError
from fedge.edge_runtime.kernel.protocol import all_devices_topic, device_topic
from fedge.edge_runtime.kernel.transport import (
    ClientStats,
    InMemoryBroker,
    InMemoryTransport,
    Message,
    Transport,
    topic_matches,
    validate_filter,
    validate_topic,
)

MATCHES = [  # (filter, topic, matches) -- MQTT 3.1.1 section 4.7 examples and edge cases
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/#", "sport", True),
    ("#", "sport/tennis", True),
    ("#", "/", True),
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/tennis/+", "sport/tennis", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("+", "sport", True),
    ("+", "/finance", False),
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+/tennis/#", "sport/tennis/player1", True),
    ("sport/+/player1", "sport/tennis/player1", True),
    ("a/b", "a/b", True),
    ("a/b", "a/B", False),
    ("a/b", "a/b/", False),
    ("a//b", "a//b", True),
    ("a/+/b", "a//b", True),
    ("#", "$SYS/broker", False),
    ("+/broker", "$SYS/broker", False),
    ("$SYS/#", "$SYS/broker", True),
    ("$SYS/+", "$SYS/broker", True),
    (all_devices_topic("update"), device_topic("pi-1", "update"), True),
    (all_devices_topic("update"), device_topic("pi-1", "checkin"), False),
]


@pytest.mark.parametrize("topic_filter, topic, expected", MATCHES)
def test_topic_matches_table(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize("bad", ["", "a/+", "#", "a/#", "a\0b", "sport+", "\ud800"])
def test_invalid_publish_topics(bad):
    with pytest.raises(ValueError):
        validate_topic(bad)


@pytest.mark.parametrize("bad", ["", "a/#/b", "#/a", "a#", "a/b#", "a+/b", "+a", "a/+b/c", "x\0"])
def test_invalid_filters(bad):
    with pytest.raises(ValueError):
        validate_filter(bad)


def test_valid_filters_and_topics():
    for f in ("#", "+", "+/+", "a/+/#", "/", "a//b", "$SYS/#"):
        assert validate_filter(f) == f
    assert validate_topic("a/b c/ü") == "a/b c/ü"
    with pytest.raises(ValueError):
        validate_topic("x" * 70000)
    with pytest.raises(TypeError):
        validate_topic(b"a/b")


def test_publish_subscribe_basics_and_isinstance():
    broker = InMemoryBroker()
    with broker.connect("coord") as coord, broker.connect("dev") as dev:
        assert isinstance(coord, Transport) and coord.client_id == "coord"
        coord.subscribe(all_devices_topic("checkin"))
        assert coord.receive() is None
        dev.publish(device_topic("dev", "checkin"), b"hello")
        dev.publish(device_topic("dev", "status"), b"not subscribed")
        assert coord.receive() == Message(device_topic("dev", "checkin"), b"hello", retain=False)
        assert coord.receive() is None
    assert coord.closed and dev.closed and broker.client_ids == ()


def test_order_per_publisher_and_own_messages():
    broker = InMemoryBroker()
    a = broker.connect("a")
    a.subscribe("t/#")
    for i in range(50):
        a.publish(f"t/{i % 3}", bytes([i]))
    got = [a.receive().payload[0] for _ in range(50)]
    assert got == list(range(50))


def test_retained_delivery_replacement_and_clearing():
    broker = InMemoryBroker()
    pub = broker.connect("pub")
    pub.publish("cfg/a", b"old", retain=True)
    pub.publish("cfg/a", b"new", retain=True)
    pub.publish("cfg/b", b"b", retain=True)
    pub.publish("other", b"x", retain=True)
    sub = broker.connect("sub")
    sub.subscribe("cfg/+")
    got = {}
    for _ in range(2):
        m = sub.receive()
        got[m.topic] = m
    assert got == {"cfg/a": Message("cfg/a", b"new", True), "cfg/b": Message("cfg/b", b"b", True)}
    assert sub.receive() is None
    # a live publish arrives with retain=False even when the publisher set it
    pub.publish("cfg/a", b"live", retain=True)
    assert sub.receive() == Message("cfg/a", b"live", retain=False)
    # empty retained payload clears the entry (and is still delivered live)
    pub.publish("cfg/a", b"", retain=True)
    assert sub.receive() == Message("cfg/a", b"")
    late = broker.connect("late")
    late.subscribe("cfg/#")
    assert late.receive() == Message("cfg/b", b"b", retain=True)
    assert late.receive() is None


def test_delivered_once_with_overlapping_filters():
    broker = InMemoryBroker()
    sub = broker.connect("sub")
    for f in ("fedge/#", "fedge/v1/+/+/update", all_devices_topic("update"), "#"):
        sub.subscribe(f)
    broker.connect("dev").publish(device_topic("d1", "update"), b"u")
    assert sub.receive() is not None
    assert sub.receive() is None
    sub.unsubscribe("#")
    sub.unsubscribe("fedge/#")
    sub.unsubscribe("never/subscribed")
    broker.connect("dev2").publish(device_topic("d1", "update"), b"u2")
    assert sub.receive().payload == b"u2"
    sub.unsubscribe("fedge/v1/+/+/update")
    sub.unsubscribe(all_devices_topic("update"))
    broker.connect("dev3").publish(device_topic("d1", "update"), b"u3")
    assert sub.receive() is None


def test_takeover_disconnects_old_client_and_publishes_will():
    broker = InMemoryBroker()
    watcher = broker.connect("coord")
    watcher.subscribe(all_devices_topic("status"))
    will = Message(device_topic("pi", "status"), b"offline", retain=True)
    old = broker.connect("pi", will=will)
    old.subscribe("x/#")
    broker.connect("pub").publish("x/1", b"queued before takeover")
    new = broker.connect("pi")
    assert old.closed and not new.closed and broker.client_ids.count("pi") == 1
    assert watcher.receive() == Message(will.topic, b"offline")
    late = broker.connect("late")
    late.subscribe(will.topic)  # the will was retained
    assert late.receive() == Message(will.topic, b"offline", retain=True)
    # what was queued before the drop is still handed out, then the transport raises
    assert old.receive().payload == b"queued before takeover"
    with pytest.raises(TransportError, match="taken over"):
        old.receive()
    with pytest.raises(TransportError, match="taken over"):
        old.publish("x/1", b"late")
    with pytest.raises(TransportError):
        old.subscribe("y")
    with pytest.raises(TransportError):  # as MqttTransport's: the caller tries again (delivery.sync_subscription)
        old.unsubscribe("x/#")
    # the new session starts clean: no subscriptions carried over
    broker.connect("pub").publish("x/1", b"after")
    assert new.receive() is None
    old.close()  # idempotent, and does not disconnect the new owner of the id
    assert not new.closed and "pi" in broker.client_ids


def test_drop_publishes_will_but_clean_close_does_not():
    broker = InMemoryBroker()
    watcher = broker.connect("w")
    watcher.subscribe("status/#")
    a = broker.connect("a", will=Message("status/a", b"gone"))
    b = broker.connect("b", will=Message("status/b", b"gone"))
    b.close()
    assert watcher.receive() is None
    broker.drop("a")
    assert watcher.receive() == Message("status/a", b"gone")
    with pytest.raises(TransportError, match="lost"):
        a.publish("t", b"")
    with pytest.raises(KeyError):
        broker.drop("a")


def test_blocking_receive_across_threads():
    broker = InMemoryBroker()
    sub = broker.connect("sub")
    sub.subscribe("t")
    pub = broker.connect("pub")
    start = time.monotonic()
    assert sub.receive(timeout=0.05) is None
    assert time.monotonic() - start >= 0.04
    timer = threading.Timer(0.05, pub.publish, args=("t", b"late"))
    timer.start()
    try:
        assert sub.receive(timeout=5.0) == Message("t", b"late")
    finally:
        timer.join()
    with pytest.raises(ValueError):
        sub.receive(timeout=-1)


def test_close_wakes_a_thread_blocked_forever():
    broker = InMemoryBroker()
    client = broker.connect("c")
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            client.receive(timeout=None)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=wait) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.02)
    client.close()
    for t in threads:
        t.join(timeout=2.0)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == 2 and all(isinstance(e, TransportError) for e in errors)


def test_concurrent_publishers_lose_nothing():
    broker = InMemoryBroker()
    sub = broker.connect("sub")
    sub.subscribe("n/+")
    pubs = [broker.connect(f"p{i}") for i in range(4)]

    def run(i: int) -> None:
        for k in range(200):
            pubs[i].publish(f"n/{i}", k.to_bytes(2, "little"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    per_topic: dict[str, list[int]] = {}
    while (m := sub.receive()) is not None:
        per_topic.setdefault(m.topic, []).append(int.from_bytes(m.payload, "little"))
    assert per_topic == {f"n/{i}": list(range(200)) for i in range(4)}  # per-publisher order


def test_counters():
    broker = InMemoryBroker()
    a, b = broker.connect("a"), broker.connect("b")
    b.subscribe("t/#")
    b.subscribe("t/+")
    a.publish("t/1", b"12345")
    a.publish("t/2", bytearray(b"678"), retain=True)
    a.publish("u", b"nobody")
    c = broker.connect("c")
    c.subscribe("t/2")
    assert broker.stats("a") == ClientStats(bytes_published=14, messages_published=3)
    assert broker.stats("b") == ClientStats(bytes_received=8, messages_received=2)
    assert broker.stats("c") == ClientStats(bytes_received=3, messages_received=1)
    assert broker.stats("never") == ClientStats()


def test_max_payload_and_argument_checks():
    broker = InMemoryBroker(max_payload=4)
    client = broker.connect("c")
    client.subscribe("t")
    client.publish("t", b"1234")
    with pytest.raises(PayloadTooLarge):
        client.publish("t", b"12345")
    assert client.receive().payload == b"1234" and client.receive() is None
    assert broker.stats("c").messages_published == 1
    with pytest.raises(ValueError):
        client.publish("t/+", b"")
    with pytest.raises(ValueError):
        client.publish("t", b"", qos=3)
    with pytest.raises(ValueError):
        client.subscribe("a/#/b")
    with pytest.raises(TypeError):
        client.publish("t", "text")
    with pytest.raises(ValueError):
        broker.connect("")


def test_closed_transport_raises():
    broker = InMemoryBroker()
    client = broker.connect("c")
    assert isinstance(client, InMemoryTransport)
    client.close()
    client.close()
    for call in (
        lambda: client.publish("t", b"x"),
        lambda: client.subscribe("t"),
        lambda: client.unsubscribe("t"),
        lambda: client.receive(),
        lambda: client.receive(timeout=None),
    ):
        with pytest.raises(TransportError, match="closed"):
            call()


def test_routing_index_agrees_with_matching_every_filter_through_random_churn():
    """The broker routes through an index (exact topics, wildcard clients); an oracle checks
    each delivery against topic_matches over the filters each client holds at that moment."""
    import random

    rng = random.Random(7)
    topics = ["a/b", "a/c", "a/b/c", "x", "a", "b/b"]
    filters = topics + ["a/+", "+/b", "a/#", "#", "+", "a/+/c"]
    broker = InMemoryBroker()
    clients = {f"c{i}": broker.connect(f"c{i}") for i in range(6)}
    held: dict[str, set[str]] = {cid: set() for cid in clients}
    for step in range(600):
        cid = rng.choice(sorted(clients))
        action = rng.random()
        if action < 0.35:
            f = rng.choice(filters)
            clients[cid].subscribe(f)
            held[cid].add(f)
        elif action < 0.55 and held[cid]:
            f = rng.choice(sorted(held[cid]))
            clients[cid].unsubscribe(f)
            held[cid].discard(f)
        elif action < 0.6:
            clients[cid] = broker.connect(cid)  # takeover: the new connection holds no filters
            held[cid] = set()
        else:
            topic = rng.choice(topics)
            broker.connect("pub").publish(topic, f"{step}".encode())
            for other, transport in clients.items():
                got = []
                while (msg := transport.receive(0.0)) is not None:
                    if not msg.retain:
                        got.append((msg.topic, msg.payload))
                want = [(topic, f"{step}".encode())] if any(topic_matches(f, topic) for f in held[other]) else []
                assert got == want, (step, other, sorted(held[other]), topic)
