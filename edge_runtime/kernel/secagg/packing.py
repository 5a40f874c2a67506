"""Field elements packed to exactly m bits each on the wire (little-endian bit order), so a
masked vector of d values mod 2^m costs ceil(d * m / 8) bytes, not 4 d."""

from __future__ import annotations

import numpy as np


def packed_size(length: int, bits: int) -> int:
    return (length * bits + 7) // 8


def pack(values: np.ndarray, bits: int) -> bytes:
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    v = np.ascontiguousarray(values, dtype="<u4").reshape(-1)
    if bits < 32 and v.size and int(v.max()) >> bits:
        raise ValueError(f"a value does not fit {bits} bits")
    as_bits = np.unpackbits(v.view(np.uint8).reshape(-1, 4), axis=1, bitorder="little")[:, :bits]
    return np.packbits(as_bits.reshape(-1), bitorder="little").tobytes()


def unpack(data: bytes, length: int, bits: int) -> np.ndarray:
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in [1, 32], got {bits}")
    if len(data) != packed_size(length, bits):
        raise ValueError(f"{len(data)} bytes do not hold {length} values of {bits} bits")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[:length * bits]
    full = np.zeros((length, 32), dtype=np.uint8)
    full[:, :bits] = flat.reshape(length, bits)
    return np.packbits(full, axis=1, bitorder="little").reshape(-1).view("<u4").astype(np.uint32)
