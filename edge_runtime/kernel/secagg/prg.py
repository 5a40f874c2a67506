"""A seed expanded into a mask: `length` integers uniform mod 2^m.

AES-128-CTR (`cryptography`: 16-byte seeds, the self-mask seeds and the pair-mask seeds alike;
AES-NI on x86 and ARMv8 crypto extensions on the devices; 32-byte seeds select AES-256, which
costs 18% more here for no security the 128-bit X25519 agreements could use) over zeros gives
the keystream; each 32-bit word is reduced mod 2^m. Since 2^m divides 2^32
the reduction keeps the words uniform, with no rejection step, so both ends expand the same
seed to the same vector. m <= 32 covers b + ceil(log2 n) for 16-bit inputs and up to 65,536
devices; wider fields are refused rather than silently wrapped.
"""

from __future__ import annotations

import functools

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MAX_FIELD_BITS = 32
_ZERO_IV = bytes(16)  # safe: every seed is used for exactly one expansion (one pair or self-mask, one round)


def expand(seed: bytes, length: int, field_bits: int) -> np.ndarray:
    """uint32 vector of `length` values in [0, 2^field_bits)."""
    if not 1 <= field_bits <= MAX_FIELD_BITS:
        raise ValueError(f"field_bits must be in [1, {MAX_FIELD_BITS}], got {field_bits}")
    stream = words(seed, length)
    if field_bits < 32:
        return np.bitwise_and(stream, np.uint32((1 << field_bits) - 1), dtype=np.uint32)
    return stream.astype(np.uint32)  # a writable copy


def words(seed: bytes, length: int) -> np.ndarray:
    """The same stream unreduced: `length` uint32 words uniform mod 2^32 (read-only). Sums of
    masks can be taken mod 2^32 and reduced mod 2^m once at the end, since 2^m divides 2^32:
    expand(seed, n, m) == words(seed, n) & (2^m - 1)."""
    if len(seed) not in (16, 32):
        raise ValueError(f"a mask seed is 16 or 32 bytes, got {len(seed)}")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor()
    data = encryptor.update(_zeros(4 * length))
    encryptor.finalize()  # CTR has no tail: nothing to append (appending would copy the whole stream)
    return np.frombuffer(data, dtype="<u4")


class Expander:
    """words() into one reused buffer: the coordinator expands tens of thousands of masks of one
    length, and a fresh 400 kB result each time costs a page-faulting allocation (an mmap per
    call in glibc) that showed as a third of the expansion's time. `of(seed)` is valid until
    the next call."""

    def __init__(self, length: int):
        self.length = length
        self._zeros = _zeros(4 * length)
        self._buffer = bytearray(4 * length + 15)  # update_into wants room for a block's tail
        self._view = np.frombuffer(self._buffer, dtype="<u4", count=length)
        self._view.flags.writeable = False

    def of(self, seed: bytes) -> np.ndarray:
        if len(seed) not in (16, 32):
            raise ValueError(f"a mask seed is 16 or 32 bytes, got {len(seed)}")
        Cipher(algorithms.AES(seed), modes.CTR(_ZERO_IV)).encryptor().update_into(self._zeros, self._buffer)
        return self._view


@functools.lru_cache(maxsize=4)
def _zeros(size: int) -> bytes:
    """The keystream's plaintext, allocated once per vector length (the coordinator expands
    tens of thousands of masks of one length)."""
    return bytes(size)
