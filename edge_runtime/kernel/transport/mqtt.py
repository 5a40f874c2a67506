"""The MQTT transport: paho-mqtt 2.x (callback API v2, MQTT 5) behind the `Transport` interface.

paho is the engine, not the interface: its callbacks only fill a queue that `receive` pulls
from, its return codes become exceptions, and a dropped link is reported, never swallowed:
the next `receive` raises ConnectionLost once, `publish` raises NotConnected until the link
is back, and `connection_count` goes up on every (re)connect so the owner can resend.

Sessions are persistent (clean_start false, session expiry): QoS 1 messages to an offline
device wait in the broker, and `session_present` says whether the last CONNACK found them.
Reconnects are automatic, with jittered exponential backoff (backoff.py), each to the next
of url and fallback_urls (a cluster's nodes) when one cannot be reached. A message over the
negotiated packet size travels as chunks (chunks.py) and is reassembled on receipt; what
fails reassembly is counted in `dropped`, never returned. A publish the broker refuses (a
PUBACK failure, e.g. the ACL) is logged, counted in `refused_publishes`, and raised as
PublishRefused by the next `publish` or `flush`.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from typing import cast

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..errors import (
    BrokerRefused,
    ConnectionLost,
    NotConnected,
    PayloadTooLarge,
    PublishRefused,
    TransportError,
)
from ..flood import so_far, worth_logging
from .backoff import Backoff
from .base import Message, Transport, validate_filter, validate_qos, validate_topic
from .chunk_inbox import ChunkInbox
from .chunks import is_chunk, split_message
from .connect_failure import ConnectFailures
from .fair_queue import FairQueue
from .paho_client import make_client, use_endpoint
from .settings import MqttSettings

log = logging.getLogger("fedge.mqtt")


_FATAL_CONNACK = {133, 134, 135, 138, 140}  # bad client id, bad credentials, not authorized, banned, bad auth method
_PUBLISH_OVERHEAD = 64  # bytes kept free in a packet for fixed header, topic length, packet id, properties
_DEFAULT_PACKET = 256 << 20  # MQTT's own limit when the broker announces none
_REFUSALS_KEPT = 8  # refused publishes named in the next PublishRefused; the rest are counted


class MqttTransport(Transport):
    """One MQTT client connection. Construct, then `connect()`; `close()` when done."""

    def __init__(self, client_id: str, settings: MqttSettings, *, will: Message | None = None,
                 rng: random.Random | None = None) -> None:
        if not client_id:
            raise ValueError("client_id must be non-empty")
        self._client_id = client_id
        self.settings = settings
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._rng = rng or random.Random()
        # Per sender: a few of its largest messages; in all: 16 senders' worth, at least 1 GiB.
        self._queue = FairQueue(4 * settings.inbound_limit, max(16 * settings.inbound_limit, 1 << 30), client_id)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._closed = False
        self._started = False
        self._attempt = 0
        self._refusal: str | None = None  # last CONNACK failure, for connect()'s error
        self._refusal_fatal = False  # credentials or authorization: retrying will not help
        self._filters: dict[str, int] = {}  # filter -> qos, replayed on every reconnect
        self._inflight: dict[int, str] = {}  # mid -> topic, until the broker's PUBACK
        self._early_acks: set[int] = set()  # PUBACKs that beat publish() returning its mid
        self.connect_failures = ConnectFailures(settings)  # why attempts failed: logged, and counted by cause
        self._suback: dict[int, tuple[threading.Event, list]] = {}
        self._broker_max_packet = _DEFAULT_PACKET
        self._inbox = ChunkInbox(client_id, settings)  # fed by paho's thread, expired by ours
        self.connection_count = 0  # successful CONNACKs so far
        self.session_present = False  # the last CONNACK's flag: False = the broker had no session for us
        self._node = 0  # index into settings.endpoints() of the node we (re)connect to
        self.refused_publishes = 0  # PUBACKs with a failure reason (e.g. ACL), since creation
        self._refusals: list[list] = []  # [mid, topic, reason] not yet raised (under _lock)
        self._unreported_refusals = 0  # how many those stand for (the list keeps the first few)

        self._client, self._endpoint = make_client(client_id, settings, will, self)
        self._set_next_delay()

    # ------------------------------------------------------------------ lifecycle

    def connect(self, timeout: float | None = None) -> MqttTransport:
        """Start the network thread and wait for the first CONNACK (timeout 0: do not wait).

        Raises BrokerRefused (and closes) when the broker refuses us (credentials, client
        id). Raises TransportError when no connection is up within `timeout` (default from
        settings); the network thread keeps retrying in the background, so calling again
        waits more, and operations work as soon as the link is up.
        """
        with self._lock:
            if not self._started:
                self._started = True
                self._client.loop_start()
        if timeout == 0:
            return self
        limit = self.settings.connect_timeout_s if timeout is None else timeout
        deadline = time.monotonic() + limit
        while not self._connected.wait(0.05):
            if self._refusal is not None and self.connection_count == 0 and self._refusal_fatal:
                refusal = self._refusal
                self.close()
                raise BrokerRefused(f"{self._endpoint} refused client {self._client_id!r}: {refusal}")
            if time.monotonic() >= deadline:
                why = self.connect_failures.why() or "; is the broker running?"
                raise TransportError(f"no connection to {self._endpoint} within {limit:g} s{why}")
        return self

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def dropped(self) -> Counter[str]:
        """Inbound chunk frames refused (oversize, malformed_chunk, chunk_memory_full),
        incomplete sets thrown away (chunks_expired, chunks_evicted), and messages over their
        sender's share of the inbound queue (inbound_full: fair_queue.py), by reason; a snapshot."""
        return self._inbox.dropped + self._queue.dropped_counts()

    @property
    def pending_chunk_bytes(self) -> int:
        """Bytes held now in incomplete chunk sets, all senders together."""
        return self._inbox.pending_bytes

    @property
    def max_payload(self) -> int:
        """Largest payload one PUBLISH can carry to this broker; larger ones are chunked."""
        limit = self._broker_max_packet
        if self.settings.max_packet_size:
            limit = min(limit, self.settings.max_packet_size)
        return limit - _PUBLISH_OVERHEAD

    def close(self) -> None:
        """Disconnect cleanly (the broker does not publish our Last Will). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        was_up = self._connected.is_set()
        self._connected.clear()
        try:
            if was_up:  # paho logs an error for a DISCONNECT without a link
                self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._queue.put_control(_Closed("the transport was closed"))

    def abort(self) -> None:
        """Cut the link without a DISCONNECT, as a power loss would: the broker publishes our
        Last Will. For fault tests and simulated dropouts."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._connected.clear()
        sock = self._client.socket()
        if sock is not None:
            with suppress(OSError):  # first, so paho cannot flush queued messages on its way out
                sock.shutdown(socket.SHUT_RDWR)
        self._client.loop_stop()
        if sock is not None:
            with suppress(OSError):
                sock.close()
        self._queue.put_control(_Closed("the link was cut (abort)"))

    # ------------------------------------------------------------------ operations

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        validate_topic(topic)
        validate_qos(qos)
        data = bytes(payload)
        self._require_link()
        self._raise_refusals()
        if len(data) > self.settings.max_message_bytes:
            raise PayloadTooLarge(f"{len(data)} bytes to {topic!r}: over the {self.settings.max_message_bytes}-byte "
                                  "message limit")
        limit = self.max_payload - len(topic.encode())
        if len(data) <= limit:
            frames = [data]
        elif retain:
            raise PayloadTooLarge(f"retained message of {len(data)} bytes to {topic!r} does not fit one {limit}-byte "
                                  "packet")
        else:
            frames = split_message(data, limit)
        for frame in frames:
            info = self._client.publish(topic, frame, qos=qos, retain=retain)
            if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                raise NotConnected(f"link to {self._endpoint} dropped while publishing to {topic!r}")
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise TransportError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
            if qos > 0:
                with self._lock:
                    if info.mid in self._early_acks:
                        self._early_acks.discard(info.mid)
                        for refusal in self._refusals:  # its PUBACK came before we knew the mid
                            if refusal[0] == info.mid and refusal[1] is None:
                                refusal[1] = topic
                    else:
                        self._inflight[info.mid] = topic

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe and wait for the broker's SUBACK; BrokerRefused if it says no."""
        validate_filter(topic_filter)
        validate_qos(qos)
        self._require_link()
        granted = self._subscribe_now(topic_filter, qos)
        if granted.is_failure:
            raise BrokerRefused(f"broker refused subscription {topic_filter!r}: {granted}")
        with self._lock:
            self._filters[topic_filter] = qos

    def unsubscribe(self, topic_filter: str) -> None:
        validate_filter(topic_filter)
        self._require_link()
        with self._lock:
            self._filters.pop(topic_filter, None)
        rc, _ = self._client.unsubscribe(topic_filter)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:  # the link dropped since _require_link: the broker's session keeps it
            raise NotConnected(f"unsubscribe {topic_filter!r} failed: {paho.error_string(rc)}")

    def receive(self, timeout: float | None = 0.0) -> Message | None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 or None, got {timeout}")
        self._inbox.expire()
        item = self._queue.get(timeout)
        if item is None:
            return None
        if isinstance(item, _LinkLost):
            raise ConnectionLost(f"client {self._client_id!r} lost its link to {self._endpoint}: {item.reason}")
        if isinstance(item, _Closed):
            self._queue.put_control(item)  # keep raising for every later call
            raise TransportError(f"client {self._client_id!r}: {item.reason}")
        return cast(Message, item)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the broker acknowledged every QoS 1 publish; False on timeout.
        Raises PublishRefused if the broker refused any publish not yet reported."""
        deadline = time.monotonic() + (self.settings.op_timeout_s if timeout is None else timeout)
        while True:
            with self._lock:
                done = not self._inflight
            if done or time.monotonic() >= deadline:
                self._raise_refusals()
                return done
            time.sleep(0.005)

    # ------------------------------------------------------------------ paho callbacks (network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refusal, self._refusal_fatal = str(reason_code), getattr(reason_code, "value", 0) in _FATAL_CONNACK
            if line := self.connect_failures.refused(self._endpoint, self._refusal):  # counted; doubling lines
                log.warning("%s: %s", self._client_id, line)
            self._set_next_delay()
            return
        self._refusal = None
        self.connect_failures.connected()
        self.session_present = bool(flags.session_present)
        if properties is not None and getattr(properties, "MaximumPacketSize", None):
            self._broker_max_packet = int(properties.MaximumPacketSize)
        with self._lock:
            filters = list(self._filters.items())  # paho resends unacknowledged QoS 1 packets itself
        # Resubscribe always: after a broker restart without persistence the session is gone.
        for topic_filter, qos in filters:
            client.subscribe(topic_filter, options=SubscribeOptions(qos=qos))
        self._attempt = 0
        self._set_next_delay()
        self.connection_count += 1
        self._connected.set()
        if self.connection_count > 1:
            log.info("%s: reconnected to %s (session present: %s)", self._client_id, self._endpoint,
                     flags.session_present)

    def _on_connect_fail(self, client, userdata) -> None:
        line = self.connect_failures.record(self._node, self._endpoint, getattr(client, "connect_error", None))
        if line is not None:  # the first, a new cause, then at doubling counts: hours away cost a few lines
            log.warning("%s: %s; retrying", self._client_id, line)
        if self.settings.fallback_urls:  # a cluster: the next attempt goes to its next node
            self._node, self._endpoint = self._node + 1, use_endpoint(client, self.settings, self._node + 1)
        self._set_next_delay()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_up = self._connected.is_set()
        self._connected.clear()
        with self._lock:
            closing = self._closed
        if not closing and was_up:
            log.warning("%s: lost link to %s: %s", self._client_id, self._endpoint, reason_code)
            self._queue.put_control(_LinkLost(str(reason_code)))
        self._set_next_delay()

    def _on_message(self, client, userdata, message) -> None:
        payload = message.payload
        if is_chunk(payload):
            payload = self._inbox.feed(message.topic, payload)
            if payload is None:
                return
        self._queue.put(Message(message.topic, payload, bool(message.retain)))  # over a bound: dropped, counted

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        refused = reason_code.is_failure
        with self._lock:  # one block: publish() fills in the topic of an early refusal under it
            topic = self._inflight.pop(mid, None)
            if topic is None:
                self._early_acks.add(mid)
            if refused:
                self.refused_publishes += 1
                n = self.refused_publishes
                self._unreported_refusals += 1
                if len(self._refusals) < _REFUSALS_KEPT:
                    self._refusals.append([mid, topic, str(reason_code)])
        if refused and worth_logging(n):  # a misconfigured ACL must not flood the log
            log.error("%s: broker %s refused a publish to %s: %s (is the ACL right for this client?)%s",
                      self._client_id, self._endpoint, topic or "a topic", reason_code, so_far(n, "refused"))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._lock:
            waiter = self._suback.pop(mid, None)
        if waiter is not None:
            waiter[1].extend(reason_codes)
            waiter[0].set()

    # ------------------------------------------------------------------ helpers

    def _subscribe_now(self, topic_filter: str, qos: int):
        done = threading.Event()
        codes: list = []
        with self._lock:  # registered before paho can deliver the SUBACK
            rc, mid = self._client.subscribe(topic_filter, options=SubscribeOptions(qos=qos))
            if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
                self._suback[mid] = (done, codes)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotConnected(f"subscribe {topic_filter!r} failed: {paho.error_string(rc)}")
        if not done.wait(self.settings.op_timeout_s) or not codes:
            raise TransportError(f"no SUBACK for {topic_filter!r} within {self.settings.op_timeout_s:g} s")
        return codes[0]

    def _raise_refusals(self) -> None:
        with self._lock:
            refusals, count = self._refusals, self._unreported_refusals
            self._refusals, self._unreported_refusals = [], 0
        if count:
            named = "; ".join(f"{topic or 'a topic'}: {reason}" for _, topic, reason in refusals)
            more = f" and {count - len(refusals)} more" if count > len(refusals) else ""
            raise PublishRefused(f"broker {self._endpoint} refused {count} publish(es) from {self._client_id!r} "
                                 f"({named}{more}); check the ACL grants this client those topics")

    def _require_link(self) -> None:
        if self._closed:
            raise TransportError(f"client {self._client_id!r} is closed")
        if not self._connected.is_set():
            raise NotConnected(f"client {self._client_id!r} has no link to {self._endpoint} right now"
                               f"{self.connect_failures.why()}")

    def _set_next_delay(self) -> None:
        # paho waits between reconnects; we choose the wait, with jitter, before each retry.
        delay = self._backoff.delay(self._attempt, self._rng)
        self._attempt += 1
        if hasattr(self, "_client"):
            self._client.reconnect_delay_set(min_delay=delay, max_delay=delay)

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("connected" if self.connected else "disconnected")
        return f"MqttTransport({self._client_id!r}, {self._endpoint}, {state})"


@dataclass(frozen=True)
class _Closed:
    reason: str


class _LinkLost(_Closed):
    """The link dropped; unlike _Closed, raised once and then the transport goes on."""
