"""Codec, the frame: every message type round trips exactly (and with its defaults), the frame
layout (magic, version, type code, length, CRC), and every rejection of a frame as a whole:
truncation, a flipped byte, a wrong version, oversize (and a small kind past its size), bad
magic, trailing bytes, an unknown type code, garbage msgpack; and a fuzz loop that only sees
CodecError. Field values, ranges and model ids: test_codec_fields.py."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import msgpack
import numpy as np
import pytest

from fedge.edge_runtime.kernel import protocol as p
from fedge.edge_runtime.kernel.codec import HEADER_SIZE, decode_message, encode_message
from fedge.edge_runtime.kernel.errors import (
    ChecksumMismatch,
    CodecError,
    MalformedPayload,
    PayloadTooLarge,
    TruncatedPayload,
    UnsupportedVersion,
)
from tests.edge_runtime.codec_samples import SAMPLES, VALID_ACK, _frame


def test_samples_cover_every_message_type():
    assert set(SAMPLES) == set(p.MESSAGE_TYPES.values())


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_round_trip_exact(cls):
    msg = SAMPLES[cls]
    out = decode_message(encode_message(msg))
    assert type(out) is cls
    assert out == msg
    if cls is p.TrainTask:
        assert type(out.hyper) is p.TaskHyper and type(out.compression) is p.CompressionSpec
        assert type(out.params) is bytes


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda c: c.__name__)
def test_round_trip_defaults(cls):
    required = {k: v for k, v in vars(SAMPLES[cls]).items() if k in _required(cls)}
    msg = cls(**required)
    assert decode_message(encode_message(msg)) == msg


def _required(cls: type) -> set[str]:
    return {
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }


def test_frame_layout():
    data = encode_message(SAMPLES[p.Status])
    magic, version, code, n = struct.unpack_from("<4sHBI", data)
    assert (magic, version, code) == (b"FDGM", p.SCHEMA_VERSION, 6)
    assert len(data) == 11 + n + 4
    assert struct.unpack("<I", data[-4:])[0] == zlib.crc32(data[:-4])


def test_bytes_like_and_buffers_accepted():
    data = encode_message(SAMPLES[p.Ack])
    assert decode_message(bytearray(data)) == SAMPLES[p.Ack]
    assert decode_message(memoryview(data)) == SAMPLES[p.Ack]
    task = p.TrainTask(
        round_id=1, task_id="t", device_id="d", model_id="m", model_version=0,
        params=bytearray(b"abc"), seed=np.int64(5),
    )
    out = decode_message(encode_message(task))
    assert out.params == b"abc" and out.seed == 5


def test_encode_rejects_non_messages_and_bad_fields():
    with pytest.raises(TypeError):
        encode_message(p.TaskHyper())
    with pytest.raises(TypeError):
        encode_message({"device_id": "x"})
    with pytest.raises(MalformedPayload, match="Status.online"):
        encode_message(p.Status(device_id="d", online=1))
    with pytest.raises(MalformedPayload, match=r"TrainTask.hyper"):
        encode_message(p.TrainTask(1, "t", "d", "m", 0, b"", hyper={"lr": 0.1}))
    with pytest.raises(MalformedPayload, match="64 bits"):
        encode_message(p.CheckIn(device_id="d", num_examples=2**70))
    with pytest.raises(MalformedPayload, match="Status"):
        encode_message(p.Status(device_id="\ud800", online=True))


def test_every_truncation_is_rejected():
    data = encode_message(SAMPLES[p.TrainTask])
    for n in range(len(data)):
        with pytest.raises(TruncatedPayload):
            decode_message(data[:n])


def test_flipped_body_byte_is_checksum_mismatch():
    data = bytearray(encode_message(SAMPLES[p.Update]))
    for i in range(HEADER_SIZE, len(data)):  # body and trailer
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(ChecksumMismatch):
            decode_message(bytes(bad))


def test_wrong_version_is_unsupported():
    data = encode_message(SAMPLES[p.Ack])
    bad = data[:4] + struct.pack("<H", p.SCHEMA_VERSION + 1) + data[6:]
    with pytest.raises(UnsupportedVersion, match="schema version"):
        decode_message(bad)
    # refused before length or CRC are looked at
    with pytest.raises(UnsupportedVersion):
        decode_message(_frame(5, b"", version=0)[:HEADER_SIZE])


def test_oversize_is_refused_before_parsing():
    data = encode_message(SAMPLES[p.TrainTask])
    assert decode_message(data, max_bytes=len(data)) == SAMPLES[p.TrainTask]
    with pytest.raises(PayloadTooLarge):
        decode_message(data, max_bytes=len(data) - 1)
    with pytest.raises(PayloadTooLarge):
        decode_message(b"garbage" * 10, max_bytes=8)


def test_bad_magic_and_trailing_bytes():
    data = encode_message(SAMPLES[p.Ack])
    with pytest.raises(MalformedPayload, match="magic"):
        decode_message(b"XDGM" + data[4:])
    with pytest.raises(MalformedPayload, match="trailing"):
        decode_message(data + b"\x00")


def test_unknown_type_code_and_garbage_msgpack():
    body = msgpack.packb(VALID_ACK)
    with pytest.raises(MalformedPayload, match="type code 200"):
        decode_message(_frame(200, body))
    with pytest.raises(MalformedPayload, match="type code 0"):
        decode_message(_frame(0, body))
    for garbage in (b"", b"\xc1", b"\x85", body + b"\x00", b"\xa3ab\xff", b"\x81\x01\x02"):
        with pytest.raises(MalformedPayload):
            decode_message(_frame(5, garbage))


def test_fuzz_only_codec_errors():
    rng = np.random.default_rng(1234)
    valid = [encode_message(m) for m in SAMPLES.values()]
    for i in range(2000):
        kind = i % 4
        if kind == 0:  # random bytes
            data = rng.bytes(int(rng.integers(0, 64)))
        elif kind == 1:  # random body behind a good header and CRC
            data = _frame(int(rng.integers(0, 8)), rng.bytes(int(rng.integers(0, 48))))
        else:  # mutations of valid frames
            data = bytearray(valid[int(rng.integers(len(valid)))])
            for _ in range(int(rng.integers(1, 4))):
                data[int(rng.integers(len(data)))] = int(rng.integers(256))
            if kind == 3:  # re-seal the CRC so the mutation reaches msgpack and validation
                data[-4:] = struct.pack("<I", zlib.crc32(bytes(data[:-4])))
            data = bytes(data)
        try:
            out = decode_message(data, max_bytes=4096)
        except CodecError:
            continue
        assert type(out) in p.MESSAGE_TYPES.values()


def test_personal_head_from_global_stays_out_of_the_frame_while_off():
    """A TaskHyper field added after devices shipped: their decoders refuse unknown fields, so
    a task carries it only when it is on (and then decodes to the same task)."""
    def body(task):
        frame = encode_message(task)
        return msgpack.unpackb(frame[HEADER_SIZE:-4], raw=False)

    off = p.TrainTask(1, "t", "d", "m", 0, b"", hyper=p.TaskHyper())
    on = dataclasses.replace(off, hyper=p.TaskHyper(personal_head_from_global=True))
    assert "personal_head_from_global" not in body(off)["hyper"]
    assert body(on)["hyper"]["personal_head_from_global"] is True
    assert decode_message(encode_message(on)) == on and decode_message(encode_message(off)) == off
    assert not p.TaskHyper().personal_head_from_global  # off by default


def test_a_small_kind_past_its_size_is_refused_before_it_is_parsed():
    """A check-in of 16 MiB of one-byte items cost the coordinator 10 s and 270 MiB to decode and
    was then accepted. A frame of a small kind is now refused on its size alone (the body here
    is not even msgpack: it is never looked at)."""
    from fedge.edge_runtime.kernel.codec import SMALL_TYPES
    from fedge.edge_runtime.kernel.wire_fields import MAX_SMALL_FRAME

    code = {c: k for k, c in p.MESSAGE_TYPES.items()}
    for cls in SMALL_TYPES & set(p.MESSAGE_TYPES.values()):
        with pytest.raises(PayloadTooLarge, match=cls.__name__):
            decode_message(_frame(code[cls], b"\xc1" * MAX_SMALL_FRAME))
    assert decode_message(encode_message(SAMPLES[p.CheckIn])) == SAMPLES[p.CheckIn]  # the real thing is small


def test_msgpack_is_told_the_item_cap_before_it_builds_anything():
    from fedge.edge_runtime.kernel.wire_fields import MAX_ITEMS

    body = msgpack.packb({"device_id": "d", "alive": [""] * (MAX_ITEMS + 1)})
    code = {c: k for k, c in p.MESSAGE_TYPES.items()}[p.Update]
    with pytest.raises(MalformedPayload, match="not valid msgpack"):
        decode_message(_frame(code, body))
