"""codec.py's size limit of the small kinds exactly at MAX_SMALL_FRAME (2026-12-06 mutation audit
of the update path: benchmarks/results/2026-12-06-mutation4-update/)."""

from __future__ import annotations

import msgpack
import pytest

from fedge.edge_runtime.kernel import protocol as p
from fedge.edge_runtime.kernel.codec import HEADER_SIZE, TRAILER_SIZE, decode_message
from fedge.edge_runtime.kernel.errors import MalformedPayload, PayloadTooLarge
from fedge.edge_runtime.kernel.wire_fields import MAX_SMALL_FRAME
from tests.edge_runtime.codec_samples import _frame


def _check_in_frame(size: int) -> bytes:
    """A CheckIn frame of exactly `size` bytes: a map with an unknown field padded to fit."""
    code = {c: k for k, c in p.MESSAGE_TYPES.items()}[p.CheckIn]
    overhead = len(msgpack.packb({"device_id": "d", "pad": b"x" * 70_000}, use_bin_type=True)) - 70_000  # bin32
    body = msgpack.packb({"device_id": "d", "pad": b"x" * (size - HEADER_SIZE - TRAILER_SIZE - overhead)},
                         use_bin_type=True)
    frame = _frame(code, body)
    assert len(frame) == size
    return frame


def test_a_small_kind_of_exactly_max_small_frame_bytes_is_read_and_one_more_is_refused():
    """'refused past MAX_SMALL_FRAME bytes': at the limit the body is parsed (and refused here
    for its unknown field), one byte over it is never looked at."""
    with pytest.raises(MalformedPayload, match="unknown field"):
        decode_message(_check_in_frame(MAX_SMALL_FRAME))
    with pytest.raises(PayloadTooLarge, match="CheckIn"):
        decode_message(_check_in_frame(MAX_SMALL_FRAME + 1))
