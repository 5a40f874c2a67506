"""Shared, round-fixed quantization: values every device encodes alike, so they can be summed.

Today's compression gives each tensor its own scale, and sums of such codes mean nothing. Here
every device of a round uses the same scale, announced by the task as the clip range c:

    rotate:    y = H (s * x[perm])      seeded by the round (public): a random permutation,
                                        random signs and a normalized Walsh-Hadamard transform
    clip:      y = clip(y, -c, c)       the L-inf clip; the device's only norm defence
    quantize:  q = round_stochastic(y / c * L),  L = 2^(b-1) - 1, so q in [-L, L]
    offset:    v = q + L in [0, 2^b - 2]  (non-negative, so n of them sum without wrapping in
                                        m = b + ceil(log2 n) bits)

A shared L-inf scale wastes most of the bits on a peaky vector: one large coordinate sets the
scale for all. The rotation spreads the vector's energy evenly (each rotated coordinate is
about ||x|| / sqrt(d)), so c can sit a few standard deviations out (Kairouz et al. 2021).
H is applied in blocks along the binary decomposition of d (65536 + 32768 + ...), so nothing
is padded: the wire carries exactly d coordinates. The rotation is orthonormal and linear, so
the sum is un-rotated once, on the coordinator. Stochastic rounding keeps the codes unbiased.
"""

from __future__ import annotations

import math

import numpy as np

SUPPORTED_BITS = range(2, 25)  # 2..24: L >= 1; b + ceil(log2 n) must also fit the 32-bit mask words,
# which the coordinator checks at load for the devices it asks (secagg_field_bits)


def levels(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"secure-aggregation bits must be in [2, 24], got {bits}")
    return (1 << (bits - 1)) - 1


def field_bits(bits: int, devices: int) -> int:
    """m = b + ceil(log2 n): n values of at most 2^b - 2 sum below 2^m."""
    if devices < 1:
        raise ValueError("need at least one device")
    return bits + max(0, math.ceil(math.log2(devices)))


def _blocks(d: int) -> list[tuple[int, int]]:
    """(start, size) of power-of-two blocks covering [0, d), largest first."""
    out, start = [], 0
    for j in range(d.bit_length() - 1, -1, -1):
        if d >> j & 1:
            out.append((start, 1 << j))
            start += 1 << j
    return out


def _hadamard(a: np.ndarray) -> np.ndarray:
    """Normalized Walsh-Hadamard transform of a power-of-two length vector (its own inverse)."""
    size, h = a.size, 1
    while h < size:
        a = a.reshape(-1, 2, h)
        a = np.stack((a[:, 0] + a[:, 1], a[:, 0] - a[:, 1]), axis=1)
        h *= 2
    return a.reshape(-1) / math.sqrt(size)


def _plan(d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 0x207A7E])
    return rng.permutation(d), rng.choice(np.array([-1.0, 1.0]), size=d)


def rotate(x: np.ndarray, seed: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    perm, signs = _plan(x.size, seed)
    y = x[perm] * signs
    return np.concatenate([_hadamard(y[s:s + n]) for s, n in _blocks(x.size)]) if x.size else y


def unrotate(y: np.ndarray, seed: int) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    perm, signs = _plan(y.size, seed)
    z = np.concatenate([_hadamard(y[s:s + n]) for s, n in _blocks(y.size)]) * signs if y.size else y
    x = np.empty_like(z)
    x[perm] = z
    return x


def quantize(y: np.ndarray, clip_range: float, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Offset codes v in [0, 2^b - 2] (uint32) of the already rotated y."""
    if not (clip_range > 0 and math.isfinite(clip_range)):
        raise ValueError(f"the clip range must be a positive finite number, got {clip_range!r}")
    top = levels(bits)
    y = np.asarray(y, dtype=np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError("cannot quantize NaN/Inf values")
    scaled = np.clip(y, -clip_range, clip_range) * (top / clip_range)
    low = np.floor(scaled)
    codes = low + (rng.random(scaled.shape) < scaled - low)
    return (np.clip(codes, -top, top) + top).astype(np.uint32)


def decode_sum(total: np.ndarray, count: int, clip_range: float, bits: int) -> np.ndarray:
    """The rotated-domain float sum from the exact field sum of `count` devices' offset codes."""
    top = levels(bits)
    return (np.asarray(total, dtype=np.int64) - count * top).astype(np.float64) * (clip_range / top)


def encode(x: np.ndarray, seed: int, clip_range: float, bits: int, rng: np.random.Generator) -> np.ndarray:
    """rotate, clip, quantize, offset: what a device masks."""
    return quantize(rotate(x, seed), clip_range, bits, rng)


def decode(total: np.ndarray, count: int, seed: int, clip_range: float, bits: int) -> np.ndarray:
    """The float sum of `count` devices' vectors from the field sum of their `encode`s."""
    return unrotate(decode_sum(total, count, clip_range, bits), seed)
