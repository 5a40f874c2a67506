"""Protocol message <-> bytes: one framed, checksummed msgpack map per message.

Frame (little-endian)::

    offset  size  field
    0       4     magic b"FDGM"
    4       2     u16 schema version (protocol.SCHEMA_VERSION)
    6       1     u8 message type code (protocol.MESSAGE_TYPES, secagg.messages.SECAGG_MESSAGE_TYPES)
    7       4     u32 body length n, in bytes
    11      n     body: msgpack map {field name: value}
    11+n    4     u32 zlib.crc32 of bytes [0, 11+n)

Body values: nested dataclasses are maps, tuples are arrays, bytes are msgpack bin,
dict[str, float] is a map. Decoding is strict and checks every field against its
annotation: an unknown field, a missing required field or a wrong type is
MalformedPayload naming the message type and field (e.g. ``TrainTask.hyper.lr``).
A field that has a default may be absent, and one declared with
bounded(omit_default=True) is left out while it holds its default (a field added after
peers shipped: they refuse unknown fields, so it must not appear until it is used). Ints
travel as ints; an int in a float field is accepted and cast. bool is never accepted as int or float, nor int as bool.

Values are range-checked too, on decode and on encode: an int must lie in its field's
range (protocol.bounded) or else fit a signed 64-bit integer (what SQLite stores); a float
(a dict's values included) must be finite and in its field's range; a str is at most
protocol.MAX_TEXT characters, or its field's range bounds its length, and holds no NUL; a model id
(wire_fields.model_id_field) is one plain name that can name a folder; a list or map holds at most
its field's item cap (wire_fields.list_field), and msgpack is told MAX_ITEMS before it builds
anything. A frame of a small kind (SMALL_TYPES: check-ins, declines, acks, fetch requests, ...)
is refused past MAX_SMALL_FRAME bytes before it is parsed. A value out of range
is MalformedPayload naming the field, so no handler ever sees 2**63 examples, a NaN learning
rate or an infinite pace. (Tensors inside bytes fields are update_codec's and the
coordinator's to check.)

decode_message raises only CodecError subclasses, whatever the bytes; encode_message
raises TypeError for an object that is not a protocol message and MalformedPayload for
a field whose value does not fit its annotation, so what encodes always decodes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import struct
import typing
import zlib
from typing import Any

import msgpack

from . import protocol as _p
from .errors import (
    ChecksumMismatch,
    CodecError,
    MalformedPayload,
    PayloadTooLarge,
    TruncatedPayload,
    UnsupportedVersion,
)
from .protocol import I64, MAX_TEXT, SCHEMA_VERSION
from .protocol import MESSAGE_TYPES as _CORE_TYPES
from .secagg.messages import SECAGG_MESSAGE_TYPES, KeyAdvertisement
from .wire_fields import MAX_ITEMS, MAX_SMALL_FRAME

MAGIC = b"FDGM"
_HEADER = struct.Struct("<4sHBI")  # magic, schema version, type code, body length
_TRAILER = struct.Struct("<I")  # crc32
HEADER_SIZE = _HEADER.size  # 11 bytes
TRAILER_SIZE = _TRAILER.size  # 4 bytes
_MAX_BODY = 0xFFFFFFFF
_INT_RANGE = (-(2**63), 2**64 - 1)  # what msgpack can carry
_SCALARS = (bool, int, float, str, bytes)
if set(_CORE_TYPES) & set(SECAGG_MESSAGE_TYPES):
    raise ImportError("a secure-aggregation message type code collides with a core one")
MESSAGE_TYPES: dict[int, type] = {**_CORE_TYPES, **SECAGG_MESSAGE_TYPES}  # every code this schema speaks
# Kinds that carry no tensors or share lists: refused past MAX_SMALL_FRAME before parsing.
SMALL_TYPES = frozenset({_p.CheckIn, _p.Decline, _p.Ack, _p.Status, _p.Pace, _p.FetchRequest, _p.Announcement,
                         _p.EvalReport, KeyAdvertisement})
_CODES: dict[type, int] = {cls: code for code, cls in MESSAGE_TYPES.items()}


def encode_message(msg: Any) -> bytes:
    """Frame one protocol message (an instance of a class in protocol.MESSAGE_TYPES)."""
    code = _CODES.get(type(msg))
    if code is None:
        names = ", ".join(c.__name__ for c in _CODES)
        raise TypeError(f"not a protocol message: {type(msg).__name__}; expected one of {names}")
    name = type(msg).__name__
    try:
        body = msgpack.packb(_dump(msg, name), use_bin_type=True)
    except Exception as exc:  # e.g. a str with lone surrogates, a bin over 4 GiB
        raise MalformedPayload(f"{name}: cannot encode: {exc}") from None
    if len(body) > _MAX_BODY:
        raise PayloadTooLarge(f"{name}: body of {len(body)} bytes does not fit a u32 length")
    head = _HEADER.pack(MAGIC, SCHEMA_VERSION, code, len(body))
    crc = zlib.crc32(body, zlib.crc32(head))
    return b"".join((head, body, _TRAILER.pack(crc)))


def decode_message(data: bytes, max_bytes: int | None = None) -> Any:
    """Parse and validate one frame; raises only CodecError subclasses for bad bytes.

    max_bytes: refuse (PayloadTooLarge) a frame longer than this before parsing it.
    """
    cls, body = _unframe(data, max_bytes)
    return _build(cls, body, cls.__name__)


def frame_body(data: bytes, max_bytes: int | None = None) -> tuple[type, dict] | None:
    """(message type, body map) of a frame whose bytes are intact (magic, version, length,
    checksum, msgpack map, within max_bytes) whatever its fields hold; None for one that is not.
    For a frame decode_message refused for its content: what it was (agent.py answers a task
    it cannot read by the ids it can), never to act on its other fields."""
    try:
        return _unframe(data, max_bytes)
    except CodecError:
        return None


def check_field(cls: type, name: str, value: Any) -> Any:
    """`value` as decode_message would take it for field `name` of `cls`, or MalformedPayload."""
    f = _fields(cls).get(name)
    if f is None:
        raise MalformedPayload(f"{cls.__name__} has no field {name!r}")
    return _value(f.hint, value, f"{cls.__name__}.{name}", True, f.bounds, f.pattern, f.items)


def _unframe(data: bytes, max_bytes: int | None) -> tuple[type, dict]:
    """The frame's message type and its body map, the bytes checked but not the fields."""
    if not isinstance(data, (bytes, bytearray)):
        data = memoryview(data).tobytes()  # TypeError for objects that are not bytes-like
    n = len(data)
    if max_bytes is not None and n > max_bytes:
        raise PayloadTooLarge(f"frame of {n} bytes is over the {max_bytes}-byte limit")
    if n < HEADER_SIZE:
        raise TruncatedPayload(f"{n} bytes is shorter than the {HEADER_SIZE}-byte frame header")
    magic, version, code, body_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise MalformedPayload(f"bad magic {magic!r}, expected {MAGIC!r}: not a fedge message")
    if version != SCHEMA_VERSION:
        raise UnsupportedVersion(
            f"frame has schema version {version}, this build speaks {SCHEMA_VERSION}; "
            "upgrade the older side"
        )
    expected = HEADER_SIZE + body_len + TRAILER_SIZE
    if n < expected:
        raise TruncatedPayload(f"frame is {n} bytes, header promises {expected}")
    if n > expected:
        raise MalformedPayload(f"{n - expected} trailing bytes after a {expected}-byte frame")
    view = memoryview(data)
    (crc,) = _TRAILER.unpack_from(data, n - TRAILER_SIZE)
    if zlib.crc32(view[: n - TRAILER_SIZE]) != crc:
        raise ChecksumMismatch("frame checksum mismatch: bytes corrupted in flight or on disk")
    cls = MESSAGE_TYPES.get(code)
    if cls is None:
        raise MalformedPayload(f"unknown message type code {code}")
    if cls in SMALL_TYPES and n > MAX_SMALL_FRAME:
        raise PayloadTooLarge(f"a {cls.__name__} of {n} bytes is over the {MAX_SMALL_FRAME}-byte limit of its kind")
    try:
        body = msgpack.unpackb(
            view[HEADER_SIZE : n - TRAILER_SIZE], raw=False, strict_map_key=True, use_list=True,
            max_array_len=MAX_ITEMS, max_map_len=MAX_ITEMS,
        )
    except Exception as exc:  # msgpack raises several unrelated types
        raise MalformedPayload(f"{cls.__name__}: body is not valid msgpack: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedPayload(f"{cls.__name__}: body must be a map, got {type(body).__name__}")
    return cls, body


@dataclasses.dataclass(frozen=True)
class _Field:
    hint: Any
    required: bool
    bounds: tuple | None = None  # protocol.bounded's (lo, hi), else the hint's default range
    omitted: Any = None  # bounded(omit_default=True): this default is left out of the frame (old peers)
    pattern: Any = None  # model_id_field, sha256_field: a wire_fields.TextPattern the whole str must match
    items: int | None = None  # list_field: at most this many entries in the tuple or dict


@functools.cache
def _fields(cls: type) -> dict[str, _Field]:
    """Init fields of a dataclass with resolved annotations; rejects unsupported ones."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        _check_hint(hints[f.name], f"{cls.__name__}.{f.name}")
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        omitted = f.default if f.metadata.get("omit_default") else None
        out[f.name] = _Field(hints[f.name], required, f.metadata.get("range"), omitted, f.metadata.get("pattern"),
                             f.metadata.get("items"))
    return out


def _check_hint(hint: Any, where: str) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        _fields(hint)
    elif origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        _check_hint(args[0], where)
    elif origin is dict and len(args) == 2 and args[0] is str:
        _check_hint(args[1], where)
    elif hint not in _SCALARS:
        raise TypeError(f"{where}: the codec does not support annotation {hint!r}")


def _build(cls: type, data: dict, where: str) -> Any:
    fields = _fields(cls)
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise MalformedPayload(f"{where}: unknown field(s) {', '.join(sorted(map(repr, unknown)))}")
    missing = [name for name, f in fields.items() if f.required and name not in data]
    if missing:
        raise MalformedPayload(f"{where}: missing required field(s) {', '.join(missing)}")
    kwargs = {k: _value(fields[k].hint, v, f"{where}.{k}", True, fields[k].bounds, fields[k].pattern,
                        fields[k].items) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a __post_init__ check
        raise MalformedPayload(f"{where}: {exc}") from None


def _dump(obj: Any, where: str) -> dict[str, Any]:
    out = {}
    for name, f in _fields(type(obj)).items():
        value = getattr(obj, name)
        if f.omitted is None or value != f.omitted:
            out[name] = _value(f.hint, value, f"{where}.{name}", False, f.bounds, f.pattern, f.items)
    return out


@functools.cache
def _kind(hint: Any) -> tuple[bool, Any, tuple]:
    """(is a dataclass, origin, args) of an annotation, worked out once per annotation: asking
    typing on every field of every message was a third of decoding an Update (bench ingest)."""
    return dataclasses.is_dataclass(hint), typing.get_origin(hint), typing.get_args(hint)


def _value(hint: Any, value: Any, where: str, decode: bool, bounds: tuple | None = None, pattern: Any = None,
           items: int | None = None) -> Any:
    """Check `value` against `hint`; decode builds dataclasses, encode dumps them to maps."""
    is_dataclass, origin, args = _kind(hint)
    if is_dataclass:
        if decode and isinstance(value, dict):
            return _build(hint, value, where)
        if not decode and type(value) is hint:
            return _dump(value, where)
        raise _wrong(where, "map" if decode else hint.__name__, value)
    if origin in (tuple, dict) and items is not None and isinstance(value, (list, tuple, dict)) \
            and len(value) > items:
        raise MalformedPayload(f"{where}: {len(value)} entries, at most {items}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong(where, "array", value)
        return tuple(_value(args[0], v, f"{where}[{i}]", decode, bounds, pattern) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _wrong(where, "map", value)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise MalformedPayload(f"{where}: key {k!r} is not a string")
            _check_range(k, None, f"{where} key")  # a text like any other: length, no NUL
            out[k] = _value(args[1], v, f"{where}[{k!r}]", decode, bounds)
        return out
    value = _check_range(_scalar(hint, value, where), bounds, where)
    if pattern is not None and not pattern.fullmatch(value):
        raise MalformedPayload(f"{where}: {value[:80]!r} is not {pattern.description}")
    return value


def _check_range(value: Any, bounds: tuple | None, where: str) -> Any:
    if isinstance(value, str):
        limit = bounds[1] if bounds else MAX_TEXT
        if len(value) > limit:
            raise MalformedPayload(f"{where}: {len(value)} characters, at most {limit}")
        if "\x00" in value:  # no field means one; PostgreSQL's text cannot store it (the write would fail)
            raise MalformedPayload(f"{where}: contains a NUL character")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedPayload(f"{where}: {value} is not a finite number")
    lo, hi = bounds or (I64 if isinstance(value, int) else (-math.inf, math.inf))
    if not lo <= value <= hi:
        raise MalformedPayload(f"{where}: {value} is outside [{lo}, {hi}]")
    return value


def _scalar(hint: type, value: Any, where: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif isinstance(value, bool):
        pass  # bool is an int subclass; never accept it as a number
    elif hint is int:
        if isinstance(value, numbers.Integral):  # numpy ints too, on encode
            value = int(value)
            if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
                raise MalformedPayload(f"{where}: {value} does not fit in 64 bits")
            return value
    elif hint is float:
        if isinstance(value, numbers.Real):
            try:
                return float(value)
            except OverflowError:
                raise MalformedPayload(f"{where}: {value} does not fit a float") from None
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is bytes:
        if isinstance(value, bytes):
            return value
        if isinstance(value, (bytearray, memoryview)):
            return bytes(value)
    raise _wrong(where, hint.__name__, value)


def _wrong(where: str, expected: str, value: Any) -> MalformedPayload:
    return MalformedPayload(f"{where}: expected {expected}, got {type(value).__name__}")


for _cls in MESSAGE_TYPES.values():  # fail at import, not on the first message, if unsupported
    _fields(_cls)
