"""Hostile messages for the coordinator: framed by hand (encode_message refuses what they
carry), mutated from valid ones one field at a time, with an oracle of what is surely invalid
that does not read protocol.py's range table."""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib

import msgpack
import numpy as np

from fedge.edge_runtime.kernel.codec import MAGIC
from fedge.edge_runtime.kernel.errors import FedgeError
from fedge.edge_runtime.kernel.protocol import MESSAGE_TYPES, SCHEMA_VERSION

CODES = {cls: code for code, cls in MESSAGE_TYPES.items()}
EXTREME_INTS = (2**63, 2**64 - 1, 2**63 - 1, 2**32, 2**32 - 1, 2**31, -1, 0, 1, -(2**63))
EXTREME_FLOATS = (math.nan, math.inf, -math.inf, 1e308, -1e308, 3e38, -0.0, 5e-324, 0.0, 1e-30)
WEIRD_STRINGS = ("", "x" * 300, "ünï/+#\0", "../../etc/passwd", "bad_dataset", "\U0001f600" * 40)
ROUND_COUNTS = ("round_id", "model_version", "base_version")  # counters: never negative


def raw_frame(code: int, body: object) -> bytes:
    """A well-formed frame around any msgpack body (no field checks)."""
    data = msgpack.packb(body, use_bin_type=True)
    head = struct.pack("<4sHBI", MAGIC, SCHEMA_VERSION, code, len(data))
    return head + data + struct.pack("<I", zlib.crc32(head + data))


def as_map(msg) -> dict:
    """A message as the plain map its frame carries."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(msg)


def named_reasons() -> set[str]:
    """Every `reason` an error class in fedge declares: the names a rejection may carry."""
    import fedge.coordinator.artifacts  # noqa: F401  (registers its error classes)
    import fedge.coordinator.errors  # noqa: F401
    out, todo = set(), [FedgeError]
    while todo:
        cls = todo.pop()
        out.add(cls.reason)
        todo.extend(cls.__subclasses__())
    return out


def _leaves(body: dict, prefix=()):
    for k, v in body.items():
        if isinstance(v, dict) and k != "metrics":
            yield from _leaves(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def _put(body: dict, path: tuple, value) -> dict:
    out = dict(body)
    out[path[0]] = value if len(path) == 1 else _put(out[path[0]], path[1:], value)
    return out


def _extreme_like(value, rng: np.random.Generator):
    if isinstance(value, bool):
        return bool(rng.integers(2))
    if isinstance(value, int):
        return EXTREME_INTS[rng.integers(len(EXTREME_INTS))]
    if isinstance(value, float):
        return EXTREME_FLOATS[rng.integers(len(EXTREME_FLOATS))]
    if isinstance(value, str):
        return WEIRD_STRINGS[rng.integers(len(WEIRD_STRINGS))]
    if isinstance(value, bytes):
        return rng.bytes(int(rng.integers(0, 300)))
    if isinstance(value, list):
        return [WEIRD_STRINGS[rng.integers(len(WEIRD_STRINGS))] for _ in range(int(rng.integers(0, 5)))]
    if isinstance(value, dict):  # metrics
        return {WEIRD_STRINGS[rng.integers(len(WEIRD_STRINGS))]: EXTREME_FLOATS[rng.integers(len(EXTREME_FLOATS))]}
    raise TypeError(type(value))


def _random_value(rng: np.random.Generator):
    pool = (None, True, 1.5, -7, 2**63, "s", b"b", [1, "a"], {"k": 1}, {1: 2}, [], math.nan)
    return pool[rng.integers(len(pool))]


def surely_invalid(path: tuple, old, new) -> bool:
    """What no message may carry in a field that held `old`, judged without protocol.py."""
    def bad_float(v):
        return isinstance(v, float) and not math.isfinite(v)
    if isinstance(new, dict):
        return any(bad_float(v) for v in new.values())
    if bad_float(new):
        return True
    if isinstance(new, str) and len(new) > 256 and path[-1] != "detail":
        return True  # ids and reasons are short; only free-text details may be long
    if isinstance(old, int) and not isinstance(old, bool) and isinstance(new, int) and not isinstance(new, bool):
        if new >= 2**63:
            return True  # what SQLite cannot store
        if path[-1] == "num_examples" and not 0 <= new < 2**32:
            return True
        if path[-1] in ROUND_COUNTS and new < 0:
            return True
    return False


def mutate(msg, rng: np.random.Generator) -> tuple[bytes, bool]:
    """(frame, surely invalid) for one random mutation of `msg`; a surely invalid frame must be
    refused as `malformed` (or `truncated`, for garbage shorter than a frame header)."""
    code = CODES[type(msg)]
    body = as_map(msg)
    kind = rng.integers(10)
    if kind == 0:  # not a message at all
        return b"XX" + rng.bytes(int(rng.integers(0, 64))), True
    if kind == 1:  # a field the schema does not have
        return raw_frame(code, {**body, "surprise": _random_value(rng)}), True
    leaves = list(_leaves(body))
    path, old = leaves[rng.integers(len(leaves))]
    if kind == 2:  # a value of some random type
        new = _random_value(rng)
        wrong_type = not (type(new) is type(old) or (isinstance(old, float) and type(new) is int))
        return raw_frame(code, _put(body, path, new)), wrong_type or surely_invalid(path, old, new)
    new = _extreme_like(old, rng)  # the right type, an extreme value
    return raw_frame(code, _put(body, path, new)), surely_invalid(path, old, new)
