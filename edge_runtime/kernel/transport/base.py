"""The publish/subscribe interface both sides run on, and MQTT topic rules.

Device and coordinator code talk to a `Transport` and never to a broker library. The
in-memory implementation (memory.py) runs simulations and most tests; the MQTT one runs
deployments. Both follow MQTT 3.1.1/5 semantics, so code tested on one works on the other.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType

_MAX_TOPIC_BYTES = 65535  # MQTT length prefix is a u16
QOS_LEVELS = (0, 1, 2)


@dataclass(frozen=True)
class Message:
    """One received message.

    retain is True only when the message was delivered because the receiver subscribed
    and the broker held a retained message for the topic; a live publish arrives with
    retain=False even if the publisher set the flag (MQTT's default behaviour).
    """

    topic: str
    payload: bytes
    retain: bool = False


class Transport(abc.ABC):
    """A client connection to a publish/subscribe broker.

    Semantics (MQTT's, which every implementation must keep):

    - QoS: 0 = at most once, 1 = at least once, 2 = exactly once. Under QoS 1 a message
      may arrive twice after a reconnect, so receivers must be idempotent (updates carry
      an update_id for that). The in-memory broker delivers every message exactly once.
    - Ordering: messages from one publisher on one topic arrive in the order they were
      published. Nothing is promised across publishers or across topics.
    - Retain: a retained publish is also stored by the broker (one per topic, the latest
      wins) and handed to every later subscriber whose filter matches; a retained publish
      with an empty payload deletes the stored one.
    - Overlapping filters: a message is delivered once per client even if several of the
      client's filters match it. A client receives its own publishes if subscribed.
    - Delivery: the transport queues what the broker sends; `receive` pulls from that
      queue. Nothing is delivered through callbacks.
    - Failure: a dropped link or a closed transport raises TransportError from every
      method; it is never silent. Messages queued before the drop are still returned by
      `receive`, then it raises.
      A publish the broker refuses (an MQTT 5 PUBACK failure, e.g. the ACL) is reported
      after the fact: the next `publish` raises PublishRefused before it sends anything.
    """

    @property
    @abc.abstractmethod
    def client_id(self) -> str:
        """The id this client connected with (unique per broker)."""

    @abc.abstractmethod
    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Send `payload` to `topic` (no wildcards). Raises ValueError for a bad topic or
        QoS, PayloadTooLarge over the broker's limit, TransportError when not connected."""

    @abc.abstractmethod
    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Start receiving messages whose topic matches `topic_filter` (+ and # allowed).
        Retained messages matching it are queued at once. TransportError when not connected."""

    @abc.abstractmethod
    def unsubscribe(self, topic_filter: str) -> None:
        """Stop the subscription with exactly this filter; unknown filters are ignored.
        TransportError when not connected or the request could not be sent: the broker's
        session may still hold the subscription, so the caller tries again."""

    @abc.abstractmethod
    def receive(self, timeout: float | None = 0.0) -> Message | None:
        """Next queued message, or None if none arrived within `timeout` seconds.

        0 returns at once, None blocks until a message arrives or the link drops.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect cleanly (no Last Will). Idempotent."""

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def validate_topic(topic: str) -> str:
    """Return `topic` if it is a valid topic name to publish to, else raise ValueError."""
    _validate_common(topic, "topic")
    if "+" in topic or "#" in topic:
        raise ValueError(f"topic {topic!r}: wildcards + and # are only allowed in filters")
    return topic


def validate_filter(topic_filter: str) -> str:
    """Return `topic_filter` if it is a valid subscription filter, else raise ValueError."""
    _validate_common(topic_filter, "filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"filter {topic_filter!r}: # must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"filter {topic_filter!r}: + must be a whole level")
    return topic_filter


def validate_qos(qos: int) -> int:
    """Return `qos` if it is 0, 1 or 2, else raise ValueError."""
    if isinstance(qos, bool) or qos not in QOS_LEVELS:
        raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
    return qos


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter` under MQTT rules (both are validated).

    + matches exactly one level (possibly empty); # matches the parent level and any
    number of levels below it; a filter that starts with a wildcard does not match a
    topic that starts with '$' (broker-internal topics such as $SYS).
    """
    return _matches(validate_filter(topic_filter), validate_topic(topic))


def _matches(topic_filter: str, topic: str) -> bool:
    """topic_matches without validation, for callers that validated already."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    for i, f in enumerate(flevels):
        if f == "#":
            return True
        if i >= len(tlevels) or (f != "+" and f != tlevels[i]):
            return False
    return len(flevels) == len(tlevels)


def _validate_common(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    if "\0" in value:
        raise ValueError(f"{what} {value!r} contains NUL")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"{what} {value!r} is not valid UTF-8") from None
    if size > _MAX_TOPIC_BYTES:
        raise ValueError(f"{what} is {size} bytes in UTF-8; MQTT allows {_MAX_TOPIC_BYTES}")
