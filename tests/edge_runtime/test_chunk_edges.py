"""Chunk reassembly and the inbound queue exactly at their documented bounds (mutation7-kernel):
a message of exactly max_message_bytes is taken whole and one byte more refused; at most 32
incomplete sets per sender (README); a set expires after expiry_s, not at it; and a refused
frame is counted by reason and logged."""

from __future__ import annotations

import logging

import pytest

from fedge.edge_runtime.kernel.errors import PayloadTooLarge
from fedge.edge_runtime.kernel.transport.chunk_inbox import ChunkInbox
from fedge.edge_runtime.kernel.transport.chunks import CHUNK_HEADER_SIZE, Reassembler, split_message
from fedge.edge_runtime.kernel.transport.settings import MqttSettings

FRAME = CHUNK_HEADER_SIZE + 100  # 100 bytes of message per chunk


def _feed_all(r: Reassembler, topic: str, payload: bytes, now: float = 0.0) -> bytes | None:
    out = None
    for frame in split_message(payload, FRAME):
        out = r.feed(topic, frame, now)
    return out


def test_a_message_of_exactly_the_limit_is_taken_and_one_byte_more_is_not():
    r = Reassembler(max_message_bytes=1000, max_pending_bytes=4000)
    assert _feed_all(r, "dev/a/update", b"m" * 1000) == b"m" * 1000
    with pytest.raises(PayloadTooLarge, match="1001 bytes"):
        _feed_all(r, "dev/a/update", b"m" * 1001)


def test_a_sender_holds_at_most_32_incomplete_sets():
    r = Reassembler(max_message_bytes=1 << 20, max_pending_bytes=1 << 24)
    for i in range(32):
        r.feed("dev/a/update", split_message(bytes([i]) * 150, FRAME)[0], i)
    assert (r.pending_sets, r.dropped["chunks_evicted"]) == (32, 0)
    r.feed("dev/a/update", split_message(b"z" * 150, FRAME)[0], 32)
    assert (r.pending_sets, r.dropped["chunks_evicted"]) == (32, 1)


def test_a_set_expires_after_expiry_s_not_at_it():
    r = Reassembler(expiry_s=10.0)
    r.feed("dev/a/update", split_message(b"e" * 500, FRAME)[0], 5.0)
    assert r.expire(15.0) == 0 and r.pending_sets == 1
    assert r.expire(15.001) == 1 and r.pending_sets == 0 and r.dropped["chunks_expired"] == 1


def test_the_inbox_counts_and_logs_each_refused_frame_by_reason(caplog):
    caplog.set_level(logging.WARNING, logger="fedge.mqtt")
    inbox = ChunkInbox("coordinator", MqttSettings(max_message_bytes=1000))
    big = split_message(b"b" * 1001, FRAME)[0]
    assert [inbox.feed("dev/a/update", big) for _ in range(3)] == [None] * 3
    assert inbox.feed("dev/a/update", b"FDGC" + b"\0" * 10) is None
    assert inbox.dropped == {"oversize": 3, "malformed_chunk": 1}
    assert len([r for r in caplog.records if "dropped a chunk" in r.getMessage()]) == 4

