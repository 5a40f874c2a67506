"""validation.py at its boundaries (2026-12-06 mutation audit of the update path:
benchmarks/results/2026-12-06-mutation4-update/): a report of exactly max_bytes, a payload and
control split two ways over the same bytes, a retained status next to a retained update."""

from __future__ import annotations

import hashlib

import pytest

from fedge.coordinator.errors import Oversize, RetainedMessage
from fedge.coordinator.validation import bytes_digest, decode_inbound, decode_report
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Status, Update, device_topic
from fedge.edge_runtime.kernel.transport.base import Message


def _frame() -> bytes:
    return encode_message(Update("a", 4, "ta", "u1", "m", 2, 7, b"\x01" * 40))


def test_a_report_of_exactly_max_bytes_is_read_and_one_byte_less_is_oversize():
    frame = _frame()
    assert decode_report(frame, len(frame)).update_id == "u1"
    with pytest.raises(Oversize, match=f"{len(frame)} bytes > limit {len(frame) - 1}"):
        decode_report(frame, len(frame) - 1)


def test_the_digest_of_payload_and_control_depends_on_where_the_bytes_split():
    """Length-prefixed: (b"ab", b"c") and (b"a", b"bc") are different updates; without a
    control it is the payload's plain sha256 (what older stores hold)."""
    assert bytes_digest(b"ab", b"c") != bytes_digest(b"a", b"bc")
    h = hashlib.sha256((2).to_bytes(8, "little"))
    h.update(b"abc")
    assert bytes_digest(b"ab", b"c") == h.hexdigest()
    assert bytes_digest(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_a_retained_status_is_read_and_a_retained_update_is_refused_by_name():
    """A device's Last Will is retained on purpose (its status topic); anything else retained
    is a replay from the broker's store."""
    will = encode_message(Status("a", online=False))
    assert decode_inbound(Message(device_topic("a", "status"), will, retain=True), 1 << 20) == Status("a", False)
    with pytest.raises(RetainedMessage, match="retained store"):
        decode_inbound(Message(device_topic("a", "update"), _frame(), retain=True), 1 << 20)
    assert decode_inbound(Message(device_topic("a", "update"), _frame()), 1 << 20).update_id == "u1"
