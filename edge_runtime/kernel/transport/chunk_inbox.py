"""The receiving side of chunking for one MQTT client: frames arrive on paho's network thread
and are reassembled there; incomplete sets are expired from the owner's thread. One lock
covers both, and what is refused is counted by reason (and logged, a flood not flooding it)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from ..errors import CodecError
from ..flood import so_far, worth_logging
from .chunks import Reassembler
from .settings import MqttSettings

log = logging.getLogger("fedge.mqtt")


class ChunkInbox:
    def __init__(self, client_id: str, settings: MqttSettings):
        self.client_id = client_id
        self.expiry_s = settings.chunk_expiry_s
        self.reassembler = Reassembler(settings.inbound_limit, settings.pending_limit, settings.chunk_expiry_s)
        self.lock = threading.Lock()
        self._refused: Counter[str] = Counter()  # frames the reassembler raised on, by reason
        self._last_expiry = time.monotonic()

    def feed(self, topic: str, payload: bytes) -> bytes | None:
        """The whole message once its last chunk arrived; None before, or when the frame is refused."""
        try:
            with self.lock:
                return self.reassembler.feed(topic, payload, time.monotonic())
        except CodecError as exc:
            with self.lock:
                self._refused[exc.reason] += 1
                n = self._refused[exc.reason]
            if worth_logging(n):  # a chunk flood must not flood the log
                log.warning("%s: dropped a chunk on %s: %s (%s)%s", self.client_id, topic, exc.reason, exc, so_far(n))
            return None

    @property
    def dropped(self) -> Counter[str]:
        with self.lock:
            return self._refused + self.reassembler.dropped

    @property
    def pending_bytes(self) -> int:
        with self.lock:
            return self.reassembler.pending_bytes

    def expire(self) -> None:
        """Throw away incomplete sets older than the expiry (checked at most once a second)."""
        now = time.monotonic()
        if now - self._last_expiry < 1.0:
            return
        self._last_expiry = now
        with self.lock:
            expired = self.reassembler.expire(now)
        if expired:
            log.warning("%s: dropped %d incomplete chunked message(s) after %g s", self.client_id, expired,
                        self.expiry_s)
