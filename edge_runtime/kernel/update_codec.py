"""Versioned binary encoding of tensor lists; the device and the coordinator both use it.

Frame (all little-endian, never pickled):

    b"FDGU"  u8 format version (=2)  u16 tensor count
    per tensor:
        u16 name length, utf-8 name
        u8 bits (32 | 8 | 4)   u8 ndim (<= 8)   ndim x u32 dims
        u8 index coding   f32 scale   u32 count of stored values
            0  dense: no indices, count == number of elements
            1  sparse: count x u32 flat indices, strictly increasing
            2  sparse: u32 byte length L, then L bytes holding count LEB128 varints, the gaps
               g_0 = i_0, g_j = i_j - i_{j-1} - 1 between the strictly increasing flat indices
               (canonical: no varint ends in a 0x00 continuation byte; each fits in 5 bytes)
        payload: count x f32 | count x int8 | ceil(count/2) bytes of 4-bit codes
                 (nibble = code + 8, low nibble first, a trailing pad nibble is 0)
    u32 CRC32 (zlib.crc32) of everything before it

The encoder writes version 2 with coding 2 for every sparse tensor: top-k indices are close
together, so a gap takes about 1.2 bytes instead of 4 (top-1% of a 40,200-entry layer: gaps
of about 100, one byte each below 128). Version 1 (codings 0 and 1 only) still decodes:
a device keeps its unacknowledged updates on disk as bytes, and those written before an
upgrade must not be lost.

Decoding checks, in order: size limit (PayloadTooLarge), enough bytes for a header
(TruncatedPayload), magic (MalformedPayload), version (UnsupportedVersion), the frame holds
every field its headers declare (TruncatedPayload), CRC (ChecksumMismatch), then content
(MalformedPayload). Truncation is judged from the (not yet verified) field lengths, so a cut
frame reads as TruncatedPayload rather than as a bad checksum; the price is that a corrupted
length field that now points past the end also reads as TruncatedPayload.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .compress import BITS, CompressedTensor
from .errors import (
    ChecksumMismatch,
    MalformedPayload,
    NonFiniteValues,
    PayloadTooLarge,
    TruncatedPayload,
    UnsupportedVersion,
)

MAGIC = b"FDGU"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # 1: before gap-coded indices (see the module docstring)
DENSE, U32_INDICES, GAP_INDICES = 0, 1, 2  # index codings
MAX_NDIM = 8
_HEADER = struct.Struct("<4sBH")  # magic, version, tensor count
_NAME_LEN = struct.Struct("<H")
_KIND = struct.Struct("<BB")  # bits, ndim
_TAIL = struct.Struct("<BfI")  # index coding, scale, count
_GAP_LEN = struct.Struct("<I")  # byte length of the gap varints
_CRC = struct.Struct("<I")
_U32_MAX = 2**32 - 1
FRAME_OVERHEAD = _HEADER.size + _CRC.size  # bytes of a frame besides its tensors


def payload_bytes(bits: int, count: int) -> int:
    """Bytes of `count` codes of `bits` each in a frame (4-bit codes two a byte)."""
    return {32: 4 * count, 8: count, 4: (count + 1) // 2}[bits]


def encode_tensors(tensors: list[CompressedTensor]) -> bytes:
    """Frame a list of tensors (order kept). Raises ValueError for what the format cannot hold."""
    if len(tensors) > 0xFFFF:
        raise ValueError(f"{len(tensors)} tensors; a frame holds at most 65535")
    parts = [_HEADER.pack(MAGIC, FORMAT_VERSION, len(tensors))]
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise ValueError(f"tensor {t.name!r} appears twice")
        seen.add(t.name)
        name = t.name.encode("utf-8")
        if len(name) > 0xFFFF:
            raise ValueError(f"tensor name of {len(name)} bytes; the format holds at most 65535")
        if len(t.shape) > MAX_NDIM or any(d > _U32_MAX for d in t.shape):
            raise ValueError(f"tensor {t.name!r}: shape {t.shape} needs ndim <= {MAX_NDIM} and dims < 2**32")
        count = t.values.size
        parts += [_NAME_LEN.pack(len(name)), name, _KIND.pack(t.bits, len(t.shape)),
                  struct.pack(f"<{len(t.shape)}I", *t.shape),
                  _TAIL.pack(DENSE if t.indices is None else GAP_INDICES, t.scale, count)]
        if t.indices is not None:
            gaps = encode_gaps(t.indices)
            parts += [_GAP_LEN.pack(len(gaps)), gaps]
        if t.bits == 32:
            parts.append(t.values.astype("<f4").tobytes())
        elif t.bits == 8:
            parts.append(t.values.tobytes())
        else:
            parts.append(_pack_nibbles(t.values))
    body = b"".join(parts)
    return body + _CRC.pack(zlib.crc32(body))


def encode_dense(params: dict[str, np.ndarray]) -> bytes:
    """Dense float32 frame of named arrays (sorted by name), e.g. global params sent down."""
    return encode_tensors([
        CompressedTensor(n, tuple(int(d) for d in np.shape(params[n])), 32, 0.0, None,
                         np.asarray(params[n], dtype=np.float32).ravel())
        for n in sorted(params)
    ])


def dense_fp32_bytes(shapes: Mapping[str, Sequence[int]]) -> int:
    """Exact length of encode_dense for arrays of these names and shapes (headers included)."""
    return FRAME_OVERHEAD + sum(tensor_header_bytes(n, len(s), False) + 4 * math.prod(s) for n, s in shapes.items())


def tensor_header_bytes(name: str, ndim: int, sparse: bool) -> int:
    """Bytes of one tensor's header fields (everything but its indices and payload)."""
    return (_NAME_LEN.size + len(name.encode("utf-8")) + _KIND.size + 4 * ndim + _TAIL.size
            + (_GAP_LEN.size if sparse else 0))


def frame_shapes(data: bytes) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of each tensor a frame declares, from its headers alone (no CRC or content
    check, no arrays built): for size estimates. A CodecError subclass when the walk fails."""
    view = memoryview(data).cast("B")
    if len(view) < FRAME_OVERHEAD:
        raise TruncatedPayload(f"frame of {len(view)} bytes is shorter than the {FRAME_OVERHEAD}-byte minimum")
    magic, version, n_tensors = _HEADER.unpack_from(view, 0)
    if magic != MAGIC or version not in READABLE_VERSIONS:
        raise MalformedPayload(f"not a readable update frame: magic {bytes(magic)!r}, version {version}")
    raws, problem, _ = _scan(view, len(view) - _CRC.size, n_tensors, version)
    if problem:
        raise MalformedPayload(problem)
    for raw in raws:  # _scan does not bound the rank (decode does): 255 dims of 2**32-1 overflow a float
        if len(raw.shape) > MAX_NDIM:
            raise MalformedPayload(f"tensor {raw.name[:64]!r} declares {len(raw.shape)} dims; at most {MAX_NDIM}")
    return [(raw.name.decode("utf-8", "replace"), tuple(raw.shape)) for raw in raws]


def encode_gaps(indices: np.ndarray) -> bytes:
    """Strictly increasing flat indices as LEB128 varints of their gaps (coding 2)."""
    gaps = np.diff(indices.astype(np.int64), prepend=-1) - 1  # >= 0
    if gaps.size == 0:
        return b""
    lengths = np.ones(gaps.size, np.int64)
    for k in range(1, 5):  # bytes needed: 7 bits each, u32 gaps take at most 5
        lengths += gaps >= (1 << (7 * k))
    ends = np.cumsum(lengths)
    out = np.empty(int(ends[-1]), np.uint8)
    starts = ends - lengths
    for k in range(5):
        has = lengths > k
        more = (lengths > k + 1)[has]
        out[starts[has] + k] = ((gaps[has] >> (7 * k)) & 0x7F) | (more.astype(np.int64) << 7)
    return out.tobytes()


def decode_gaps(data: np.ndarray, count: int, where: str) -> np.ndarray:
    """Inverse of encode_gaps: uint32 indices, or MalformedPayload for a bad varint stream."""
    if count == 0:
        if data.size:
            raise MalformedPayload(f"{where}: {data.size} index bytes for no stored values")
        return np.zeros(0, np.uint32)
    ends = np.flatnonzero(data < 0x80)
    if ends.size != count or ends[-1] != data.size - 1:
        raise MalformedPayload(f"{where}: the index bytes hold {ends.size} complete varints, "
                               f"{count} expected, and must end with the last one")
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if int(lengths.max()) > 5:
        raise MalformedPayload(f"{where}: an index varint of {int(lengths.max())} bytes (at most 5)")
    if np.any((data[ends] == 0) & (lengths > 1)):
        raise MalformedPayload(f"{where}: non-canonical index varint (ends in a zero byte)")
    shifts = 7 * (np.arange(data.size) - np.repeat(starts, lengths))
    gaps = np.add.reduceat((data & 0x7F).astype(np.int64) << shifts, starts)
    indices = np.cumsum(gaps + 1) - 1
    if int(indices[-1]) > _U32_MAX:
        raise MalformedPayload(f"{where}: index {int(indices[-1])} does not fit u32")
    return indices.astype(np.uint32)


@dataclass(frozen=True)
class _Raw:
    """One tensor's fields as found in the frame, before any content check."""

    name: bytes
    bits: int
    shape: tuple[int, ...]
    coding: int  # DENSE, U32_INDICES or GAP_INDICES
    scale: float
    count: int
    index_at: int  # byte offset of the indices (sparse only)
    index_bytes: int
    payload_at: int


class _Reader:
    """Bounds-checked cursor over data[:end]; running past end means the frame was cut."""

    def __init__(self, data: memoryview, end: int) -> None:
        self.data, self.end, self.pos = data, end, 0

    def skip(self, n: int, what: str) -> int:
        if n > self.end - self.pos:
            raise TruncatedPayload(
                f"frame ends inside {what}: needs {n} bytes at offset {self.pos}, only "
                f"{self.end - self.pos} left before the CRC; the payload was cut short")
        self.pos += n
        return self.pos - n

    def unpack(self, fmt: struct.Struct | str, what: str) -> tuple:
        fmt = fmt if isinstance(fmt, struct.Struct) else struct.Struct(fmt)
        return fmt.unpack_from(self.data, self.skip(fmt.size, what))


def decode_tensors(data: bytes, max_bytes: int | None = None,
                   max_elements: int = 50_000_000,
                   expected: dict[str, tuple[int, ...]] | None = None) -> list[CompressedTensor]:
    """Parse and validate a frame. Raises a CodecError subclass (see module docstring).

    max_elements bounds the total dense size declared by all tensors together, so a small
    sparse frame cannot make the receiver allocate a huge dense array.
    expected: tensor name -> shape the receiver's model has; checked with the other
    structural checks, so every structural fault (names, shapes, dtypes, indices) is
    reported before a finiteness fault (NonFiniteValues), whatever order tensors come in.
    """
    view = memoryview(data).cast("B")
    n = len(view)
    if max_bytes is not None and n > max_bytes:
        raise PayloadTooLarge(f"update frame of {n} bytes exceeds the limit of {max_bytes} bytes")
    if n < FRAME_OVERHEAD:
        raise TruncatedPayload(
            f"frame of {n} bytes is shorter than the {FRAME_OVERHEAD}-byte minimum")
    magic, version, n_tensors = _HEADER.unpack_from(view, 0)
    if magic != MAGIC:
        raise MalformedPayload(f"not an update frame: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersion(f"update format version {version}; this build reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}; upgrade the older side")
    raws, problem, end = _scan(view, n - _CRC.size, n_tensors, version)
    (stored,) = _CRC.unpack_from(view, n - _CRC.size)
    actual = zlib.crc32(view[: n - _CRC.size])
    if stored != actual:
        raise ChecksumMismatch(f"CRC32 {actual:#010x} does not match the trailer {stored:#010x}; "
                               "the frame was corrupted in transit or storage")
    if problem:
        raise MalformedPayload(problem)
    if end != n - _CRC.size:
        raise MalformedPayload(f"{n - _CRC.size - end} trailing bytes after the last tensor")
    return _build(view, raws, max_elements, expected)


def decode_dense(data: bytes, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Decode a frame made by encode_dense into {name: float32 array}."""
    out: dict[str, np.ndarray] = {}
    for t in decode_tensors(data, max_bytes=max_bytes):
        if t.bits != 32 or t.indices is not None:
            raise MalformedPayload(f"tensor {t.name!r} is {'sparse ' if t.indices is not None else ''}"
                                   f"{t.bits}-bit; a dense frame must hold dense fp32 tensors only")
        out[t.name] = t.values.reshape(t.shape)
    return out


def _scan(view: memoryview, end: int, n_tensors: int, version: int) -> tuple[list[_Raw], str, int]:
    """Walk the declared structure; return (tensors, problem that stopped the walk, end offset)."""
    codings = (DENSE, U32_INDICES) if version == 1 else (DENSE, U32_INDICES, GAP_INDICES)
    r = _Reader(view, end)
    r.skip(_HEADER.size, "header")
    raws: list[_Raw] = []
    for i in range(n_tensors):
        (name_len,) = r.unpack(_NAME_LEN, f"tensor {i} name length")
        name = bytes(view[r.skip(name_len, f"tensor {i} name"): r.pos])
        bits, ndim = r.unpack(_KIND, f"tensor {i} kind")
        shape = r.unpack(f"<{ndim}I", f"tensor {i} dims")
        coding, scale, count = r.unpack(_TAIL, f"tensor {i} header")
        if bits not in BITS:  # the payload size is unknown, so the walk cannot go on
            return raws, f"tensor {i}: bits {bits} not in {BITS}", r.pos
        if coding not in codings:  # nor is the size of the indices
            return raws, f"tensor {i}: index coding {coding} not in {codings} (format version {version})", r.pos
        index_at, index_bytes = -1, 0
        if coding == U32_INDICES:
            index_bytes = 4 * count
        elif coding == GAP_INDICES:
            (index_bytes,) = r.unpack(_GAP_LEN, f"tensor {i} index length")
        if coding != DENSE:
            index_at = r.skip(index_bytes, f"tensor {i} indices")
        payload_at = r.skip(payload_bytes(bits, count), f"tensor {i} payload")
        raws.append(_Raw(name, bits, shape, coding, scale, count, index_at, index_bytes, payload_at))
    return raws, "", r.pos


def _build(view: memoryview, raws: list[_Raw], max_elements: int,
           expected: dict[str, tuple[int, ...]] | None = None) -> list[CompressedTensor]:
    """Content checks on a frame whose CRC is good, then the tensors themselves. Structural
    faults raise as found; a NaN/Inf is raised only after every tensor passed them."""
    out: list[CompressedTensor] = []
    names: set[str] = set()
    elements = 0
    non_finite = ""
    for i, raw in enumerate(raws):
        try:
            name = raw.name.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPayload(f"tensor {i}: name is not valid utf-8") from None
        where = f"tensor {i} ({name!r})"
        if name in names:
            raise MalformedPayload(f"{where}: duplicate name")
        names.add(name)
        if expected is not None and tuple(expected.get(name, ())) != tuple(raw.shape):
            if name not in expected:
                raise MalformedPayload(f"{where}: the model has no tensor of that name")
            raise MalformedPayload(f"{where}: shape {tuple(raw.shape)}, the model has {tuple(expected[name])}")
        if len(raw.shape) > MAX_NDIM:
            raise MalformedPayload(f"{where}: ndim {len(raw.shape)} > {MAX_NDIM}")
        size = math.prod(raw.shape)
        elements += size
        if elements > max_elements:
            raise MalformedPayload(f"{where}: frame declares over {max_elements} elements in total")
        if raw.coding != DENSE and raw.count > size:
            raise MalformedPayload(f"{where}: {raw.count} stored values for {size} elements")
        if raw.coding == DENSE and raw.count != size:
            raise MalformedPayload(f"{where}: dense tensor of shape {raw.shape} stores {raw.count} values")
        indices = None
        if raw.coding == U32_INDICES:
            indices = np.frombuffer(view, "<u4", raw.count, raw.index_at).astype(np.uint32)
        elif raw.coding == GAP_INDICES:
            indices = decode_gaps(np.frombuffer(view, np.uint8, raw.index_bytes, raw.index_at), raw.count, where)
        if raw.bits == 32:
            values = np.frombuffer(view, "<f4", raw.count, raw.payload_at).astype(np.float32)
        elif raw.bits == 8:
            values = np.frombuffer(view, np.int8, raw.count, raw.payload_at).copy()
        else:
            values = _unpack_nibbles(view, raw.payload_at, raw.count, where)
        scale = raw.scale
        if not math.isfinite(scale) or (raw.bits == 32 and not np.all(np.isfinite(values))):
            non_finite = non_finite or f"{where}: NaN/Inf in the {'scale' if not math.isfinite(scale) else 'values'}"
            # Finite stand-ins, so the index checks below still run on this tensor.
            scale = 0.0 if raw.bits == 32 else 1.0
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0) if raw.bits == 32 else values
        try:
            out.append(CompressedTensor(name, raw.shape, raw.bits, scale, indices, values))
        except ValueError as exc:
            raise MalformedPayload(f"{where}: {exc}") from None
    if expected is not None and names != set(expected):
        raise MalformedPayload(f"frame holds tensors {sorted(names)}, the model has {sorted(expected)}")
    if non_finite:
        raise NonFiniteValues(non_finite)
    return out


def _pack_nibbles(codes: np.ndarray) -> bytes:
    nib = (codes.astype(np.int16) + 8).astype(np.uint8)  # [-7, 7] -> [1, 15]; 0 stays invalid
    if nib.size % 2:
        nib = np.append(nib, np.uint8(0))  # pad nibble
    return (nib[0::2] | (nib[1::2] << 4)).astype(np.uint8).tobytes()


def _unpack_nibbles(view: memoryview, at: int, count: int, where: str) -> np.ndarray:
    packed = np.frombuffer(view, np.uint8, (count + 1) // 2, at)
    nib = np.empty(2 * packed.size, dtype=np.uint8)
    nib[0::2], nib[1::2] = packed & 0x0F, packed >> 4
    if count % 2 and nib[-1] != 0:
        raise MalformedPayload(f"{where}: 4-bit pad nibble is {int(nib[-1])}, expected 0")
    if count and not np.all(nib[:count]):
        raise MalformedPayload(f"{where}: 4-bit nibble 0 (code -8) is outside [-7, 7]")
    return (nib[:count].astype(np.int8) - 8).astype(np.int8)
