"""Tests for edge_runtime.update_codec: round trips, exact sizes, and every way a frame is refused.

Bad frames are built by hand here (an independent writer of the documented layout), so the
decoder is checked against the spec rather than against its own encoder.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np
import pytest

from fedge.edge_runtime.kernel.compress import CompressedTensor, compress_update, decompress_update
from fedge.edge_runtime.kernel.errors import (
    ChecksumMismatch,
    CodecError,
    MalformedPayload,
    NonFiniteValues,
    PayloadTooLarge,
    TruncatedPayload,
    UnsupportedVersion,
)
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.update_codec import (
    decode_dense,
    decode_tensors,
    dense_fp32_bytes,
    encode_dense,
    encode_tensors,
)


def _ct(name, shape, bits, values, indices=None, scale=None):
    dtype = np.float32 if bits == 32 else np.int8
    idx = None if indices is None else np.asarray(indices, np.uint32)
    return CompressedTensor(name, shape, bits, (0.0 if bits == 32 else 0.25) if scale is None else scale,
                            idx, np.asarray(values, dtype))


SAMPLES = [
    _ct("dense32", (3, 4), 32, np.linspace(-2, 2, 12)),
    _ct("int8", (2, 3), 8, [-127, -1, 0, 1, 64, 127], scale=0.0123),
    _ct("q4_odd", (5,), 4, [-7, -3, 0, 5, 7]),
    _ct("q4_sparse_odd", (4, 4), 4, [7, -7, 1], indices=[0, 9, 15]),
    _ct("sparse32", (100,), 32, [1.5, -2.5], indices=[3, 99]),
    _ct("scalar32", (), 32, [3.25]),
    _ct("scalar8", (), 8, [-5], scale=2.0),
    _ct("empty", (0, 7), 32, []),
    _ct("ünïcode", (1,), 8, [0], scale=0.0),
]


def _leb128(values) -> bytes:
    """Unsigned LEB128, written out byte by byte (an independent writer of the gap coding)."""
    out = bytearray()
    for v in values:
        v = int(v)
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _gaps(indices) -> bytes:
    previous, gaps = -1, []
    for i in indices:
        gaps.append(int(i) - previous - 1)
        previous = int(i)
    return _leb128(gaps)


def _expected_len(tensors) -> int:
    """Frame length from the documented layout."""
    n = 4 + 1 + 2 + 4
    for t in tensors:
        count = t.values.size
        payload = {32: 4 * count, 8: count, 4: (count + 1) // 2}[t.bits]
        n += 2 + len(t.name.encode()) + 1 + 1 + 4 * len(t.shape) + 1 + 4 + 4 + payload
        n += 0 if t.indices is None else 4 + len(_gaps(t.indices))
    return n


def _assert_same(a: CompressedTensor, b: CompressedTensor) -> None:
    assert (a.name, a.shape, a.bits, a.scale) == (b.name, b.shape, b.bits, b.scale)
    assert a.values.dtype == b.values.dtype
    np.testing.assert_array_equal(a.values, b.values)
    if a.indices is None:
        assert b.indices is None
    else:
        assert b.indices.dtype == np.uint32
        np.testing.assert_array_equal(a.indices, b.indices)


@pytest.mark.parametrize("tensors", [SAMPLES, [], *([t] for t in SAMPLES)],
                         ids=lambda ts: "+".join(t.name for t in ts) or "none")
def test_round_trip_and_exact_length(tensors):
    frame = encode_tensors(tensors)
    assert len(frame) == _expected_len(tensors)
    decoded = decode_tensors(frame)
    assert len(decoded) == len(tensors)
    for a, b in zip(tensors, decoded):
        _assert_same(a, b)


def test_dense_round_trip_and_size_oracle():
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((4, 3)), "b": rng.standard_normal(3).astype(np.float32),
              "s": np.float32(1.5), "none": np.zeros((2, 0)), "ëmbed": rng.standard_normal((2, 2, 2))}
    frame = encode_dense(params)
    assert len(frame) == dense_fp32_bytes({n: np.shape(p) for n, p in params.items()})
    assert dense_fp32_bytes({}) == len(encode_dense({})) == 11
    out = decode_dense(frame)
    assert set(out) == set(params)
    for n, p in params.items():
        assert out[n].dtype == np.float32 and out[n].shape == np.shape(p)
        np.testing.assert_array_equal(out[n], np.asarray(p, np.float32))


def test_decode_dense_refuses_compressed_frames():
    with pytest.raises(MalformedPayload, match="dense"):
        decode_dense(encode_tensors([SAMPLES[1]]))


def test_receiver_sees_exactly_what_the_sender_accounted_for():
    rng = np.random.default_rng(1)
    delta = {"a": rng.standard_normal((6, 7)).astype(np.float32),
             "b": rng.standard_normal(9).astype(np.float32)}
    spec = CompressionSpec(quant_bits=4, topk_fraction=0.3)
    sent, residual, _ = compress_update(delta, None, spec, rng)
    received = decompress_update(decode_tensors(encode_tensors(sent)))
    for n in delta:  # bit-exact: scale is f32 on both ends, so residual + received == delta
        np.testing.assert_array_equal(received[n], decompress_update(sent)[n])
        np.testing.assert_allclose(received[n] + residual[n], delta[n], rtol=1e-6, atol=1e-6)


def test_encoder_refuses_what_the_format_cannot_hold():
    with pytest.raises(ValueError, match="twice"):
        encode_tensors([SAMPLES[0], SAMPLES[0]])
    with pytest.raises(ValueError, match="ndim"):
        encode_tensors([_ct("deep", (1,) * 9, 32, [1.0])])


# --- rejection ----------------------------------------------------------------------------------

def _recrc(frame: bytes) -> bytes:
    """Replace the trailer with a correct CRC, so only the content check can object."""
    return frame[:-4] + struct.pack("<I", zlib.crc32(frame[:-4]))


def _tensor(name=b"w", bits=8, shape=(4,), sparse=0, scale=0.5, count=None, indices=(),
            payload=None, gap_bytes=None) -> bytes:
    """One tensor record written straight from the documented layout. sparse: the index coding
    (1: u32 indices; 2: LEB128 gaps of `indices`, or `gap_bytes` as given)."""
    count = (len(indices) if sparse else math.prod(shape)) if count is None else count
    payload = bytes(count) if payload is None else payload
    if sparse == 2 and gap_bytes is not None:
        index_part = struct.pack("<I", len(gap_bytes)) + gap_bytes
    elif sparse == 2:
        index_part = struct.pack("<I", len(_gaps(indices))) + _gaps(indices)
    else:
        index_part = struct.pack(f"<{len(indices)}I", *indices)
    return (struct.pack("<H", len(name)) + name + struct.pack("<BB", bits, len(shape))
            + struct.pack(f"<{len(shape)}I", *shape) + struct.pack("<BfI", sparse, scale, count)
            + index_part + payload)


def _frame(*tensors: bytes, version: int = 2, magic: bytes = b"FDGU", trailing: bytes = b"") -> bytes:
    return _recrc(magic + struct.pack("<BH", version, len(tensors)) + b"".join(tensors) + trailing + bytes(4))


F32 = lambda *v: struct.pack(f"<{len(v)}f", *v)  # noqa: E731


def test_hand_built_good_frames_decode():
    """The writer above is right, so the rejections below are about the one field changed."""
    (t,) = decode_tensors(_frame(_tensor(bits=4, shape=(3,), payload=bytes([0x9F, 0x01]))))
    np.testing.assert_array_equal(t.values, [7, 1, -7])
    (t,) = decode_tensors(_frame(_tensor(sparse=1, indices=(0, 3), payload=bytes([1, 0xFF]))))
    np.testing.assert_array_equal(t.values, [1, -1])
    (t,) = decode_tensors(_frame(_tensor(bits=32, shape=(2,), scale=0.0, payload=F32(1.0, -2.0))))
    np.testing.assert_array_equal(t.values, [1.0, -2.0])
    (t,) = decode_tensors(_frame(_tensor(shape=(400,), sparse=2, indices=(0, 130, 399), payload=bytes([1, 2, 3]))))
    np.testing.assert_array_equal(t.indices, [0, 130, 399])


def test_version_1_frames_still_decode():
    """Updates a device wrote to disk before an upgrade (u32 indices) are read, not lost."""
    (t,) = decode_tensors(_frame(_tensor(sparse=1, indices=(0, 3), payload=bytes([1, 0xFF])), version=1))
    np.testing.assert_array_equal(t.indices, [0, 3])
    np.testing.assert_array_equal(t.values, [1, -1])
    with pytest.raises(MalformedPayload, match="index coding 2"):  # gap coding came with version 2
        decode_tensors(_frame(_tensor(sparse=2, indices=(1,), payload=b"\x01"), version=1))


@pytest.mark.parametrize("seed", range(10))
def test_gap_coded_indices_round_trip_at_every_spacing(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.choice([10, 1000, 2**20, 2**32 - 1]))
    k = int(rng.integers(1, min(size, 3000) + 1))
    idx = np.unique(rng.integers(0, size, k, dtype=np.int64))
    if seed == 0:
        idx = np.array([0, 127, 128, 128 + 16384, 2**28, 2**32 - 2], np.int64)  # each varint length
    tensor = _ct("w", (size,), 8, rng.integers(-127, 128, idx.size), indices=idx)
    frame = encode_tensors([tensor])
    assert len(frame) == _expected_len([tensor])
    _assert_same(decode_tensors(frame, max_elements=2**32)[0], tensor)


def test_gap_coding_is_much_smaller_than_u32_indices_for_top_k():
    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(40_200, 402, replace=False))  # top-1% of a 200x201 layer
    tensor = _ct("w", (40_200,), 8, rng.integers(-127, 128, idx.size), indices=idx)
    with_u32_indices = _expected_len([tensor]) - (4 + len(_gaps(idx))) + 4 * idx.size
    assert len(encode_tensors([tensor])) < with_u32_indices - 2.5 * idx.size  # ~1.2 B per index instead of 4


BAD_FRAMES = {
    "bits": _frame(_tensor(bits=16)),
    "ndim": _frame(_tensor(shape=(1,) * 9)),
    "sparse_flag": _frame(_tensor(sparse=3, indices=(1,), payload=b"\x01")),
    "gap_noncanonical": _frame(_tensor(sparse=2, indices=(1,), gap_bytes=b"\x81\x00", payload=b"\x01")),
    "gap_six_bytes": _frame(_tensor(shape=(8,), sparse=2, indices=(1,), gap_bytes=b"\x81\x80\x80\x80\x80\x00",
                                    payload=b"\x01")),
    "gap_count_short": _frame(_tensor(sparse=2, indices=(1, 2), gap_bytes=b"\x01", payload=b"\x01\x01")),
    "gap_unterminated": _frame(_tensor(sparse=2, indices=(1,), gap_bytes=b"\x01\x81", payload=b"\x01")),
    "gap_extra_bytes": _frame(_tensor(sparse=2, indices=(1,), gap_bytes=b"\x01\x01", payload=b"\x01")),
    "gap_out_of_range": _frame(_tensor(sparse=2, indices=(0, 4), payload=b"\x01\x01")),
    "gap_over_u32": _frame(_tensor(shape=(2**32 - 1,), sparse=2, indices=(0,),
                                   gap_bytes=_leb128([2**32 - 1]) + _leb128([5]), count=2, payload=b"\x01\x01")),
    "gap_bytes_for_nothing": _frame(_tensor(sparse=2, indices=(), gap_bytes=b"\x01", payload=b"")),
    "count_over_size": _frame(_tensor(shape=(2,), sparse=1, indices=(0, 1, 1), payload=b"\x01\x01\x01")),
    "index_not_increasing": _frame(_tensor(sparse=1, indices=(2, 1), payload=b"\x01\x01")),
    "index_repeated": _frame(_tensor(sparse=1, indices=(1, 1), payload=b"\x01\x01")),
    "index_out_of_range": _frame(_tensor(sparse=1, indices=(0, 4), payload=b"\x01\x01")),
    "dense_count": _frame(_tensor(shape=(4,), count=3)),
    "nibble_zero": _frame(_tensor(bits=4, shape=(2,), payload=bytes([0x80]))),
    "pad_nibble": _frame(_tensor(bits=4, shape=(1,), payload=bytes([0x38]))),
    "int8_minus_128": _frame(_tensor(shape=(2,), payload=bytes([0x80, 0]))),
    "scale_nan": _frame(_tensor(scale=float("nan"))),
    "scale_negative": _frame(_tensor(scale=-1.0)),
    "scale_on_fp32": _frame(_tensor(bits=32, shape=(1,), scale=1.0, payload=F32(1.0))),
    "value_nan": _frame(_tensor(bits=32, shape=(2,), scale=0.0, payload=F32(1.0, float("nan")))),
    "value_inf": _frame(_tensor(bits=32, shape=(1,), scale=0.0, payload=F32(float("-inf")))),
    "duplicate_name": _frame(_tensor(), _tensor()),
    "bad_utf8": _frame(_tensor(name=b"\xff\xfe")),
    "trailing": _frame(_tensor(), trailing=b"\x00"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_valid_crc_bad_content_is_malformed(case):
    with pytest.raises(MalformedPayload):
        decode_tensors(BAD_FRAMES[case])


def test_element_limit():
    frame = _frame(_tensor(shape=(1000, 1000), sparse=1, indices=(5,), payload=b"\x01"))
    assert decode_tensors(frame)[0].shape == (1000, 1000)
    with pytest.raises(MalformedPayload, match="elements"):
        decode_tensors(frame, max_elements=999_999)


def test_every_truncation_is_truncated_payload():
    frame = encode_tensors(SAMPLES[2:6])
    for cut in range(len(frame)):
        with pytest.raises(TruncatedPayload):
            decode_tensors(frame[:cut])


def test_every_flipped_byte_is_refused():
    t = _ct("w", (5,), 4, [7, -7, 1], indices=[0, 2, 4])
    frame = encode_tensors([t])
    # Layout: magic 0-3, version 4, count 5-6, name len 7-8, name 9, bits 10, ndim 11, dim 12-15,
    # index coding 16, scale 17-20, value count 21-24, index bytes 25-28, gaps 0,1,1 29-31,
    # packed codes 32-33, CRC 34-37.
    assert len(frame) == 38
    # A corrupted length can point past the end and then reads as a cut frame.
    length_fields = {5, 6, 7, 8, 11, 16, 21, 22, 23, 24, 25, 26, 27, 28}
    for pos in range(len(frame)):
        for mask in (0xFF, 0x01):
            bad = bytearray(frame)
            bad[pos] ^= mask
            with pytest.raises(CodecError) as info:
                decode_tensors(bytes(bad))
            if pos < 4:
                assert info.type is MalformedPayload
            elif pos == 4:
                assert info.type is UnsupportedVersion
            elif pos in length_fields:
                assert info.type in (ChecksumMismatch, TruncatedPayload)
            else:
                assert info.type is ChecksumMismatch, f"byte {pos} ^ {mask:#x}"


def test_version_is_checked_before_crc():
    frame = bytearray(encode_tensors(SAMPLES[:2]))
    frame[4] = 3
    with pytest.raises(UnsupportedVersion, match="version 3"):
        decode_tensors(bytes(frame))  # CRC now wrong too, but the version speaks first
    with pytest.raises(UnsupportedVersion):
        decode_tensors(_recrc(bytes(frame)))


def test_bad_magic_is_malformed():
    with pytest.raises(MalformedPayload, match="magic"):
        decode_tensors(_frame(_tensor(), magic=b"PK\x03\x04"))


def test_oversize_is_checked_first():
    frame = encode_tensors(SAMPLES)
    assert decode_tensors(frame, max_bytes=len(frame))
    with pytest.raises(PayloadTooLarge):
        decode_tensors(frame, max_bytes=len(frame) - 1)
    with pytest.raises(PayloadTooLarge):
        decode_tensors(b"garbage" * 10, max_bytes=8)
    with pytest.raises(PayloadTooLarge):
        decode_dense(encode_dense({"w": np.zeros(100)}), max_bytes=100)


def test_random_corruption_only_ever_raises_codec_errors():
    """Whatever the bytes, the decoder answers with a tensor list or a CodecError, never a crash;
    and a corrupted frame that does decode (its CRC re-sealed) is refused downstream by the
    coordinator's checks with a named reason, or else is a well-formed update of the expected
    tensors (a changed value in range: what no format check can tell from a genuine one)."""
    from fedge.coordinator.errors import UpdateRejected
    from fedge.coordinator.validation import RoundContext, check_contents
    from fedge.edge_runtime.kernel.protocol import Update

    rng = np.random.default_rng(7)
    frame = encode_tensors(SAMPLES)
    shapes = {t.name: tuple(t.shape) for t in SAMPLES}
    ctx = RoundContext(1, "m", 0, {"d": "t"}, shapes, 0.0)
    outcomes: dict[str, int] = {}
    for _ in range(2000):
        bad = bytearray(frame)
        for pos in rng.integers(0, len(bad), size=rng.integers(1, 4)):
            bad[pos] = rng.integers(0, 256)
        if rng.random() < 0.3:
            bad = bad[: rng.integers(0, len(bad) + 1)]
        if rng.random() < 0.7 and len(bad) >= 4:
            bad = bytearray(_recrc(bytes(bad)))  # reach the content checks, not just the CRC
        try:
            decode_tensors(bytes(bad), max_elements=10_000)
        except CodecError as exc:
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
            continue
        try:
            dense = check_contents(Update("d", 1, "t", "u", "m", 0, 5, bytes(bad)), ctx)
        except UpdateRejected as exc:
            outcomes["downstream:" + exc.reason] = outcomes.get("downstream:" + exc.reason, 0) + 1
            continue
        assert {k: v.shape for k, v in dense.items()} == shapes
        assert all(np.all(np.isfinite(v)) for v in dense.values())
        outcomes["well_formed"] = outcomes.get("well_formed", 0) + 1
    # Every path was taken: refused by the codec (several reasons), refused downstream, and decoded.
    assert sum(outcomes.values()) == 2000
    assert {"checksum", "truncated", "malformed"} <= set(outcomes), outcomes
    assert any(k.startswith("downstream:") for k in outcomes), outcomes
    assert outcomes.get("well_formed", 0) > 0, outcomes


def test_structural_faults_are_reported_before_non_finite_values():
    """Validation order: names, shapes and indices before finite values, whatever the tensor order."""
    ones = np.ones(4, np.float32)
    frame = bytearray(encode_tensors([CompressedTensor("a", (4,), 32, 0.0, None, ones),
                                      CompressedTensor("b", (3,), 32, 0.0, None, np.ones(3, np.float32))]))
    at = bytes(frame).index(ones.tobytes())
    frame[at:at + 4] = np.float32(np.nan).tobytes()  # a NaN in the first tensor
    struct.pack_into("<I", frame, len(frame) - 4, zlib.crc32(bytes(frame[:-4])))
    with pytest.raises(NonFiniteValues):
        decode_tensors(bytes(frame))
    with pytest.raises(MalformedPayload, match="shape") as info:  # the second tensor's shape is wrong
        decode_tensors(bytes(frame), expected={"a": (4,), "b": (5,)})
    assert not isinstance(info.value, NonFiniteValues)
    with pytest.raises(NonFiniteValues):
        decode_tensors(bytes(frame), expected={"a": (4,), "b": (3,)})


@pytest.mark.parametrize("case, message", [
    ("gap_noncanonical", "non-canonical"), ("gap_six_bytes", "6 bytes"), ("gap_count_short", "complete varints"),
    ("gap_unterminated", "complete varints"), ("gap_extra_bytes", "complete varints"),
    ("gap_out_of_range", "out of range"), ("gap_over_u32", "fit u32"), ("gap_bytes_for_nothing", "no stored values"),
])
def test_bad_gap_coding_is_named(case, message):
    with pytest.raises(MalformedPayload, match=message):
        decode_tensors(BAD_FRAMES[case], max_elements=2**32)
