"""An in-process broker with MQTT semantics, for the simulator and for tests.

Every client gets an `InMemoryTransport` whose `receive` pulls from a queue.Queue, so a
device thread can block on it while the coordinator publishes from another. One lock
guards all broker state; delivery happens under it, so every subscriber sees messages in
one global publish order (stronger than MQTT's per-publisher, per-topic order).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, fields
from typing import cast

from ..errors import PayloadTooLarge, TransportError
from .base import Message, Transport, _matches, validate_filter, validate_qos, validate_topic

_CLOSED = object()  # queue sentinel: the link is gone


@dataclass(frozen=True)
class ClientStats:
    """Traffic of one client id since the broker started (across reconnects).

    Bytes are payload bytes; topics and protocol overhead are not counted. Received
    counts what the broker delivered to the client's queue, retained messages included.
    """

    bytes_published: int = 0
    bytes_received: int = 0
    messages_published: int = 0
    messages_received: int = 0


class InMemoryBroker:
    """Thread-safe broker: retained messages, wildcards, takeover and Last Will, as MQTT.

    max_payload: publishes with a longer payload raise PayloadTooLarge (None = no limit).
    """

    def __init__(self, *, max_payload: int | None = None) -> None:
        self.max_payload = max_payload
        self._lock = threading.RLock()
        self._clients: dict[str, InMemoryTransport] = {}
        self._retained: dict[str, bytes] = {}  # topic -> payload
        self._counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        # Routing index, so one publish costs O(its subscribers), not O(clients x filters):
        # a simulated fleet of thousands of devices each with exact-topic filters.
        self._exact: defaultdict[str, set[InMemoryTransport]] = defaultdict(set)  # topic -> subscribers
        self._wildcard: set[InMemoryTransport] = set()  # clients with at least one + or # filter

    def connect(self, client_id: str, *, will: Message | None = None) -> InMemoryTransport:
        """Connect a client. An existing connection with the same id is taken over: it is
        disconnected (its Last Will is published) and its calls raise TransportError.

        will: the Last Will, published by the broker (retained if will.retain) when this
        connection is dropped (`drop`) or taken over, not on a clean `close()`.
        """
        if not isinstance(client_id, str) or not client_id:
            raise ValueError(f"client_id must be a non-empty str, got {client_id!r}")
        if will is not None:
            will = Message(validate_topic(will.topic), _as_bytes(will.payload), bool(will.retain))
        with self._lock:
            old = self._clients.get(client_id)
            if old is not None:
                reason = f"client id {client_id!r} was taken over by a new connection"
                self._disconnect(old, reason, publish_will=True)
            client = InMemoryTransport(self, client_id, will)
            self._clients[client_id] = client
            return client

    def drop(self, client_id: str) -> None:
        """Simulate a lost link: disconnect `client_id` uncleanly and publish its will."""
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                raise KeyError(f"no client {client_id!r} is connected")
            self._disconnect(client, "the link to the broker was lost", publish_will=True)

    @property
    def client_ids(self) -> tuple[str, ...]:
        """Ids of the clients connected now."""
        with self._lock:
            return tuple(self._clients)

    def stats(self, client_id: str) -> ClientStats:
        """A snapshot of one client id's traffic (zeros if it never connected)."""
        with self._lock:
            counts = self._counts.get(client_id, Counter())
            return ClientStats(**{f.name: counts[f.name] for f in fields(ClientStats)})

    # --- called by InMemoryTransport -------------------------------------------------

    def _publish(
        self, sender: InMemoryTransport, topic: str, payload: bytes, qos: int, retain: bool
    ) -> None:
        validate_topic(topic)
        validate_qos(qos)
        data = _as_bytes(payload)
        with self._lock:
            _require_live(sender)
            if self.max_payload is not None and len(data) > self.max_payload:
                raise PayloadTooLarge(
                    f"payload of {len(data)} bytes to {topic!r} is over the broker's "
                    f"{self.max_payload}-byte limit"
                )
            counts = self._counts[sender.client_id]
            counts["bytes_published"] += len(data)
            counts["messages_published"] += 1
            self._route(topic, data, bool(retain))

    def _subscribe(self, client: InMemoryTransport, topic_filter: str, qos: int) -> None:
        validate_filter(topic_filter)
        validate_qos(qos)
        with self._lock:
            _require_live(client)
            client._filters[topic_filter] = qos
            self._index(client, topic_filter, add=True)
            if "+" not in topic_filter and "#" not in topic_filter:
                retained = [(topic_filter, self._retained[topic_filter])] if topic_filter in self._retained else []
            else:
                literal = topic_filter[:min(i for i in (topic_filter.find("+"), topic_filter.find("#")) if i >= 0)]
                retained = [(t, p) for t, p in self._retained.items()
                            if t.startswith(literal) and _matches(topic_filter, t)]
            for topic, payload in retained:
                self._deliver(client, Message(topic, payload, retain=True))

    def _unsubscribe(self, client: InMemoryTransport, topic_filter: str) -> None:
        validate_filter(topic_filter)
        with self._lock:
            _require_live(client)
            if client._filters.pop(topic_filter, None) is not None:
                self._index(client, topic_filter, add=False)

    def _close(self, client: InMemoryTransport) -> None:
        with self._lock:
            self._disconnect(client, "the transport was closed", publish_will=False)

    # --- internals, all under self._lock ---------------------------------------------

    def _route(self, topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            if payload:
                self._retained[topic] = payload
            else:  # MQTT: an empty retained publish deletes the retained message
                self._retained.pop(topic, None)
        message = Message(topic, payload)  # live deliveries carry retain=False
        targets = set(self._exact.get(topic, ()))
        targets.update(c for c in self._wildcard if any(_matches(f, topic) for f in c._filters))
        for client in targets:  # once per client
            self._deliver(client, message)

    def _index(self, client: InMemoryTransport, topic_filter: str, add: bool) -> None:
        if "+" not in topic_filter and "#" not in topic_filter:
            subscribers = self._exact[topic_filter]
            if add:
                subscribers.add(client)
            else:
                subscribers.discard(client)
            if not subscribers:
                del self._exact[topic_filter]
        elif add:
            self._wildcard.add(client)
        elif not any("+" in f or "#" in f for f in client._filters):
            self._wildcard.discard(client)

    def _deliver(self, client: InMemoryTransport, message: Message) -> None:
        counts = self._counts[client.client_id]
        counts["bytes_received"] += len(message.payload)
        counts["messages_received"] += 1
        client._queue.put(message)

    def _disconnect(self, client: InMemoryTransport, reason: str, publish_will: bool) -> None:
        if client._closed_reason is not None:
            return
        if self._clients.get(client.client_id) is client:
            del self._clients[client.client_id]
        client._closed_reason = reason
        for topic_filter in list(client._filters):
            del client._filters[topic_filter]
            self._index(client, topic_filter, add=False)
        client._queue.put(_CLOSED)
        will = client._will
        if publish_will and will is not None:
            self._route(will.topic, will.payload, will.retain)


class InMemoryTransport(Transport):
    """One client of an InMemoryBroker; made by `InMemoryBroker.connect`."""

    def __init__(self, broker: InMemoryBroker, client_id: str, will: Message | None) -> None:
        self._broker = broker
        self._client_id = client_id
        self._will = will
        self._filters: dict[str, int] = {}  # filter -> qos; guarded by the broker's lock
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed_reason: str | None = None

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self._broker._publish(self, topic, payload, qos, retain)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self._broker._subscribe(self, topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self._broker._unsubscribe(self, topic_filter)

    def receive(self, timeout: float | None = 0.0) -> Message | None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        try:
            item = self._queue.get(timeout != 0, timeout)  # 0: non-blocking; None: forever
        except queue.Empty:
            return None
        if item is _CLOSED:
            self._queue.put(_CLOSED)  # keep raising, and wake any other waiting thread
            raise _gone(self)
        return cast(Message, item)

    def close(self) -> None:
        self._broker._close(self)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "connected"
        return f"InMemoryTransport({self._client_id!r}, {state})"


def _require_live(client: InMemoryTransport) -> None:
    if client._closed_reason is not None:
        raise _gone(client)


def _gone(client: InMemoryTransport) -> TransportError:
    return TransportError(f"client {client.client_id!r} is disconnected: {client._closed_reason}")


def _as_bytes(payload: bytes) -> bytes:
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, (bytearray, memoryview)):
        return bytes(payload)  # a snapshot: later writes to the buffer are not seen
    raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
