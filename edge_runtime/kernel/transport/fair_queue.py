"""The inbound queue between paho's network thread and the thread that handles messages: one
FIFO per sender (chunks.sender_of: the topic's parent, one device's topics together), served in
turn, and bounded in bytes per sender and in total.

A plain queue served messages in arrival order and held whatever arrived: one device sending
4 MiB check-ins every half second grew the coordinator by 260 MiB in 39 s while an honest
device's check-in waited behind them for more than 30 s (a reviewing helper measured it over
Mosquitto). paho acknowledges a QoS 1 message once its callback returns, so the broker's own
flow control never pushed back. Now a message that would take its sender past its share, or
everyone past the total, is dropped and counted (`dropped["inbound_full"]`, which the
coordinator exports as fedge_transport_dropped). Updates are acknowledged by the coordinator,
not by the transport, so a dropped one is sent again; check-ins repeat by themselves.

Control items (the link lost, the transport closed) keep their place: one comes out once every
message that arrived before it has, so a message received before the link went is not hidden
behind the news that it went (a test that a session's queued message survives a failover
caught that)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict, deque

from ..flood import so_far, worth_logging
from .base import Message
from .chunks import sender_of

log = logging.getLogger("fedge.mqtt")


class FairQueue:
    def __init__(self, per_sender_bytes: int, total_bytes: int, name: str = "inbound") -> None:
        if not 0 < per_sender_bytes <= total_bytes:
            raise ValueError(f"need 0 < per_sender_bytes <= total_bytes, got {per_sender_bytes}, {total_bytes}")
        self.per_sender_bytes = per_sender_bytes
        self.name = name  # for the log: the client the queue belongs to
        self.total_bytes = total_bytes
        self._ready = threading.Condition()
        self._control: deque[tuple[int, object]] = deque()  # (messages put before it, item)
        self._senders: OrderedDict[str, deque[tuple[int, Message]]] = OrderedDict()  # whose turn is first
        self._put = 0  # messages put so far: each one's place in arrival order
        self._held: dict[str, int] = {}  # sender -> bytes queued (maybe 0: empty payloads), while it has any
        self._total = 0
        self.dropped: Counter[str] = Counter()

    def put(self, message: Message) -> bool:
        """Queue a message; False (and counted) when its sender or everyone is at the bound."""
        size, sender = len(message.payload), sender_of(message.topic)
        with self._ready:
            held = self._held.get(sender, 0)
            if held + size > self.per_sender_bytes or self._total + size > self.total_bytes:
                self.dropped["inbound_full"] += 1
                n = self.dropped["inbound_full"]
            else:
                n = 0
                self._senders.setdefault(sender, deque()).append((self._put, message))
                self._put += 1
                self._held[sender] = held + size
                self._total += size
                self._ready.notify()
        if n and worth_logging(n):  # outside the lock; a flood must not flood the log
            log.warning("%s: dropped a message on %s: its sender's share of the inbound queue is full%s",
                        self.name, message.topic, so_far(n))
        return not n

    def put_control(self, item: object) -> None:
        with self._ready:
            self._control.append((self._put, item))
            self._ready.notify()

    def get(self, timeout: float | None) -> object | None:
        """The next control item, else the next message of the sender whose turn it is; None
        when there is none within `timeout` (0: do not wait; None: wait as long as it takes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while not self._control and not self._senders:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._ready.wait(left)
            if self._control and not any(q[0][0] < self._control[0][0] for q in self._senders.values()):
                return self._control.popleft()[1]  # every message that came before it is out
            sender, messages = next(iter(self._senders.items()))
            _, message = messages.popleft()
            # _held has the keys _senders has: an empty payload holds 0 bytes and is still queued
            if messages:
                self._senders.move_to_end(sender)  # its next message waits for the others' turns
                self._held[sender] -= len(message.payload)
            else:
                del self._senders[sender], self._held[sender]
            self._total -= len(message.payload)
            return message

    def dropped_counts(self) -> Counter[str]:
        """A snapshot of `dropped`."""
        with self._ready:
            return Counter(self.dropped)

    @property
    def queued_bytes(self) -> int:
        with self._ready:
            return self._total
