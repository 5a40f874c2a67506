"""Split a message that is larger than the broker's packet limit into chunks, and put it back
together on the other side. Pure: no I/O; the caller passes the time in.

Chunk frame (little-endian)::

    offset  size  field
    0       4     magic b"FDGC"
    4       2     u16 chunk format version (1)
    6       16    message id (random; one per chunked message)
    22      4     u32 index of this chunk
    26      4     u32 count of chunks
    30      4     u32 total length of the whole message, in bytes
    34      32    sha256 of the whole message
    66      n     this chunk's bytes

A whole message never starts with b"FDGC" (codec frames start with b"FDGM"), so a receiver
tells chunks from plain messages by the magic alone. Reassembly is keyed by (topic, message
id); the topic names the sender, and the broker's ACL allows only that sender to publish on
it, so one device cannot inject chunks into another's message. Memory is shared out by the
topic's parent (`fedge/v1/devices/<id>` for all of one device's channels), so a sender
cannot multiply its share by spreading sets over its channels. Chunks may repeat (QoS 1
redelivery) and may arrive in any order. A set that is not complete within `expiry_s` is
dropped, and pending sets are bounded in bytes, so a sender that never finishes cannot make
the receiver hold memory.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from ..errors import MalformedPayload, PayloadTooLarge

CHUNK_MAGIC = b"FDGC"
CHUNK_VERSION = 1
_HEADER = struct.Struct("<4sH16sIII32s")
CHUNK_HEADER_SIZE = _HEADER.size  # 66 bytes


class MalformedChunk(MalformedPayload):
    """A chunk frame that is truncated, inconsistent with its set, or fails the digest."""

    reason = "malformed_chunk"


class ChunkMemoryFull(PayloadTooLarge):
    """Incomplete chunk sets of all senders together already hold the receiver's bound."""

    reason = "chunk_memory_full"


def sender_of(topic: str) -> str:
    """Whose share of reassembly memory a topic's sets count against: the topic's parent."""
    return topic.rsplit("/", 1)[0] if "/" in topic else topic


def is_chunk(payload: bytes) -> bool:
    return payload[:4] == CHUNK_MAGIC


def split_message(payload: bytes, max_frame: int, message_id: bytes | None = None) -> list[bytes]:
    """Chunk frames of at most `max_frame` bytes each that together carry `payload`."""
    room = max_frame - CHUNK_HEADER_SIZE
    if room < 1:
        raise ValueError(f"max_frame {max_frame} leaves no room after the {CHUNK_HEADER_SIZE}-byte chunk header")
    message_id = message_id or os.urandom(16)
    if len(message_id) != 16:
        raise ValueError("message_id must be 16 bytes")
    digest = hashlib.sha256(payload).digest()
    count = max(1, -(-len(payload) // room))
    view = memoryview(payload)
    return [
        _HEADER.pack(CHUNK_MAGIC, CHUNK_VERSION, message_id, i, count, len(payload), digest)
        + bytes(view[i * room:(i + 1) * room])
        for i in range(count)
    ]


MAX_SETS_PER_SENDER = 32  # Reassembler: incomplete sets one sender may have at once


@dataclass
class _PendingSet:
    count: int
    total: int
    digest: bytes
    first_seen: float
    parts: dict[int, bytes] = field(default_factory=dict)
    stored: int = 0  # bytes held in parts


class Reassembler:
    """Collects chunk frames per (topic, message id) and returns whole messages.

    max_message_bytes: a set that declares a larger total is refused (PayloadTooLarge); it is
        also what one sender (`sender_of(topic)`) may hold in incomplete sets: a sender that
        starts a new set over that loses its own oldest sets, never another sender's.
    max_pending_bytes: bound on what all senders together hold; a chunk over it is refused
        (ChunkMemoryFull) and its set dropped.
    expiry_s: an incomplete set older than this is dropped by `expire`.
    MAX_SETS_PER_SENDER: a sender that starts one more incomplete set loses its own oldest.
        Counting bytes alone let one-byte sets pile up at about 650 bytes of bookkeeping each
        (a million of them held 623 MiB while counted as 1 MB), and every expire() and eviction
        scanned them all; a sender needs one or two sets at a time.

    `dropped` counts incomplete sets thrown away without an error to the caller, by reason:
    chunks_expired (by `expire`) and chunks_evicted (to make room in a sender's share).

    Memory is counted in bytes actually stored, and a set's chunks together may not exceed
    the total it declared, so a set cannot declare little and send much.
    """

    def __init__(self, max_message_bytes: int = 64 << 20, max_pending_bytes: int = 256 << 20, expiry_s: float = 120.0):
        self.max_message_bytes = max_message_bytes
        self.max_pending_bytes = max_pending_bytes
        self.expiry_s = expiry_s
        self._per_sender: dict[str, int] = {}  # sender_of(topic) -> bytes stored in its incomplete sets
        self._sets: dict[tuple[str, bytes], _PendingSet] = {}
        self._sender_sets: dict[str, dict[tuple[str, bytes], None]] = {}  # sender -> its sets, oldest first
        self._pending_bytes = 0
        self._recent: OrderedDict[tuple[str, bytes], None] = OrderedDict()  # completed sets, to ignore late repeats
        self.dropped: Counter[str] = Counter()

    @property
    def pending_sets(self) -> int:
        return len(self._sets)

    @property
    def pending_bytes(self) -> int:
        """Bytes held in incomplete sets, all senders together."""
        return self._pending_bytes

    def sender_bytes(self, topic: str) -> int:
        """Bytes held in incomplete sets of the sender of `topic`."""
        return self._per_sender.get(sender_of(topic), 0)

    def feed(self, topic: str, frame: bytes, now: float) -> bytes | None:
        """Add one chunk frame; the whole message when this chunk completes it, else None.

        Raises MalformedChunk or PayloadTooLarge for a frame that cannot be accepted; the
        set it belongs to (if any) is dropped, since it can no longer complete correctly.
        """
        if len(frame) < CHUNK_HEADER_SIZE:
            raise MalformedChunk(f"chunk on {topic!r} is {len(frame)} bytes, shorter than its header")
        magic, version, message_id, index, count, total, digest = _HEADER.unpack_from(frame)
        if magic != CHUNK_MAGIC:
            raise MalformedChunk(f"not a chunk frame on {topic!r}")
        if version != CHUNK_VERSION:
            raise MalformedChunk(f"chunk format version {version} on {topic!r}; this build reads {CHUNK_VERSION}")
        if count < 1 or index >= count or total < count - 1 or count > total + 1:
            raise MalformedChunk(f"chunk {index}/{count} of a {total}-byte message on {topic!r} is inconsistent")
        key = (topic, message_id)
        if key in self._recent:
            return None  # a redelivered chunk of a message already handed over
        pending = self._sets.get(key)
        if pending is None:
            if total > self.max_message_bytes:
                raise PayloadTooLarge(f"chunked message of {total} bytes on {topic!r} is over the "
                                      f"{self.max_message_bytes}-byte limit")
            sender = sender_of(topic)
            while len(self._sender_sets.get(sender, ())) >= MAX_SETS_PER_SENDER:
                self._evict_oldest(sender, key)
            pending = self._sets[key] = _PendingSet(count, total, digest, now)
            self._sender_sets.setdefault(sender, {})[key] = None
        elif (pending.count, pending.total, pending.digest) != (count, total, digest):
            self._drop(key)
            raise MalformedChunk(f"chunk {index} on {topic!r} disagrees with its set's count, size or digest")
        if index in pending.parts:
            return None  # a redelivered chunk
        data = frame[CHUNK_HEADER_SIZE:]
        if pending.stored + len(data) > pending.total:
            self._drop(key)
            raise MalformedChunk(f"chunk {index} on {topic!r} carries {len(data)} bytes, more than its set declared")
        self._make_room(topic, key, len(data))
        pending.parts[index] = data
        pending.stored += len(data)
        self._pending_bytes += len(data)
        sender = sender_of(topic)
        self._per_sender[sender] = self._per_sender.get(sender, 0) + len(data)
        if len(pending.parts) < pending.count:
            return None
        self._drop(key)
        self._recent[key] = None
        if len(self._recent) > 4096:
            self._recent.popitem(last=False)
        whole = b"".join(pending.parts[i] for i in range(pending.count))
        if len(whole) != pending.total or hashlib.sha256(whole).digest() != pending.digest:
            raise MalformedChunk(f"reassembled message on {topic!r} fails its length or sha256 check")
        return whole

    def expire(self, now: float) -> int:
        """Drop incomplete sets older than expiry_s; returns how many were dropped."""
        old = [k for k, s in self._sets.items() if now - s.first_seen > self.expiry_s]
        for key in old:
            self._drop(key)
        self.dropped["chunks_expired"] += len(old)
        return len(old)

    def _make_room(self, topic: str, key: tuple[str, bytes], size: int) -> None:
        """Evict this sender's own oldest other sets while it is over its share. When all
        senders together are at the global bound, take room from the sender holding the most,
        if that is more than this one would hold: a few flooding senders cannot starve the
        others. Refuse when no sender holds more."""
        sender = sender_of(topic)
        while self._per_sender.get(sender, 0) + size > self.max_message_bytes:
            if not self._evict_oldest(sender, key):
                break
        mine = self._per_sender.get(sender, 0) + size
        while self._pending_bytes + size > self.max_pending_bytes:
            top = max(self._per_sender, key=self._per_sender.__getitem__, default=None)
            if top is None or self._per_sender[top] <= mine or not self._evict_oldest(top, key):
                self._drop(key)
                raise ChunkMemoryFull(f"{self._pending_bytes} bytes pending reassembly from all senders; "
                                      f"refusing {size} more on {topic!r}")

    def _evict_oldest(self, sender: str, keep: tuple[str, bytes]) -> bool:
        oldest = next((k for k in self._sender_sets.get(sender, ()) if k != keep), None)
        if oldest is None:
            return False
        self._drop(oldest)
        self.dropped["chunks_evicted"] += 1
        return True

    def _drop(self, key: tuple[str, bytes]) -> None:
        pending = self._sets.pop(key, None)
        own = self._sender_sets.get(sender_of(key[0]))
        if own is not None:
            own.pop(key, None)
            if not own:
                del self._sender_sets[sender_of(key[0])]
        if pending is not None:
            self._pending_bytes -= pending.stored
            sender = sender_of(key[0])
            left = self._per_sender.get(sender, 0) - pending.stored
            if left > 0:
                self._per_sender[sender] = left
            else:
                self._per_sender.pop(sender, None)
