"""Retained messages on every node of a broker cluster that does not share them.

ejabberd routes a live publish to subscribers on every node of its cluster, but keeps a
retained message only on the node it was published to: a device that subscribes on node 2
would never see the announcement or the round's model parts the coordinator published on
node 1 (it would wait model_wait_s and then ask for its task inline, every round).

So the coordinator holds one more connection per other node (MqttSettings.fallback_urls),
used for nothing but retained publishes: every retained message goes through its main link
and through each of these. The last retained payload of each topic is remembered and
replayed when such a link (re)connects, so a node that restarted, or was down when a round
began, gets the current announcement and model parts back without waiting for the next.

Why not serve missed messages some other way: devices already fall back to a FetchRequest
when model parts do not come, but that costs model_wait_s and one inline copy of the model
per device and round, which the retained parts exist to avoid. The price here is that a
device subscribed while the coordinator publishes gets each retained message once per node
(live routing); devices subscribe to model parts only after their task, so in practice that
is the small announcement, and receivers already ignore duplicates (QoS 1 allows them).

Everything else (subscriptions, receive, connection_count, flush) is the main link's.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from fedge.edge_runtime.kernel.errors import TransportError
from fedge.edge_runtime.kernel.transport.base import Message, Transport
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings

log = logging.getLogger("fedge.coordinator")


class RetainFanout(Transport):
    """`main` for everything; its retained publishes also through each of `mirrors`."""

    def __init__(self, main: Transport, mirrors: list[Transport]):
        self.main = main
        self.mirrors = mirrors
        self._retained: dict[str, bytes] = {}  # topic -> last retained payload (b"" = deleted)
        self._seen = [0] * len(mirrors)  # each mirror's connection_count when we last replayed

    @property
    def client_id(self) -> str:
        return self.main.client_id

    def __getattr__(self, name: str):  # connection_count, connected, flush, abort, ...
        return getattr(self.main, name)

    def connect(self, timeout: float | None = None) -> RetainFanout:
        for mirror in self.mirrors:
            mirror.connect(timeout=0)  # in the background: a node that is down must not block the main link
        self.main.connect(timeout=timeout)
        return self

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.main.publish(topic, payload, qos=qos, retain=retain)
        self._replay()  # first: a mirror that just came up gets the older set, then this one
        if retain:
            self._retained[topic] = bytes(payload)
            for mirror in self.mirrors:
                self._mirror(mirror, topic, bytes(payload), qos)

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.main.subscribe(topic_filter, qos)

    def unsubscribe(self, topic_filter: str) -> None:
        self.main.unsubscribe(topic_filter)

    def receive(self, timeout: float | None = 0.0) -> Message | None:
        self._replay()
        return self.main.receive(timeout)

    def close(self) -> None:
        try:
            self.main.close()
        finally:
            for mirror in self.mirrors:
                mirror.close()

    def _replay(self) -> None:
        """A mirror that (re)connected since we last looked gets every retained message again:
        its node may be new, or may have lost them."""
        for i, mirror in enumerate(self.mirrors):
            count = getattr(mirror, "connection_count", 0)
            if count == self._seen[i] or not getattr(mirror, "connected", True):
                continue
            self._seen[i] = count
            for topic, payload in self._retained.items():
                if not self._mirror(mirror, topic, payload, 1):
                    self._seen[i] = -1  # try the whole set again next time
                    break

    def _mirror(self, mirror: Transport, topic: str, payload: bytes, qos: int) -> bool:
        """One retained publish through one mirror; False (logged) when its node is out of reach."""
        try:
            mirror.publish(topic, payload, qos=qos, retain=True)
            return True
        except TransportError as exc:  # its node is down: _replay sends everything when it is back
            log.debug("retained %s not mirrored through %s: %s", topic, mirror.client_id, exc)
            return False


def cluster_transport(client_id: str, settings: MqttSettings) -> Transport:
    """The coordinator's broker link: a plain MqttTransport, or, with fallback_urls (a cluster
    whose nodes keep their own retained messages), a RetainFanout over one link per node."""
    main = MqttTransport(client_id, settings)
    if not settings.fallback_urls:
        return main
    mirrors: list[Transport] = []
    for i, url in enumerate(settings.fallback_urls, 1):
        # Publish-only links pinned to one node: no session to keep, nowhere to fail over to.
        pinned = replace(settings, url=url, fallback_urls=(), clean_start=True, session_expiry_s=0)
        mirrors.append(MqttTransport(f"{client_id}-retain-{i}", pinned))
    return RetainFanout(main, mirrors)
