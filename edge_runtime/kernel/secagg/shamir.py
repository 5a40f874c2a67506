"""Shamir t-of-k secret sharing over a prime field.

A secret s is the constant term of a random polynomial f of degree t-1; share i is
(x_i, f(x_i)) with distinct non-zero x_i. Any t shares give s back by Lagrange interpolation
at 0; any t-1 shares are uniformly distributed whatever s is (every t-1 values at non-zero
points are hit by exactly one polynomial for each s), so they reveal nothing.

The field is the largest prime below 2^128, 2^128 - 159, so a share's value takes 16 bytes, the
size of the secret it hides (no perfect scheme does with less). The shared secrets are 16-byte
seeds drawn uniformly below the prime (`random_secret`: a 16-byte draw is at or above it with
probability 2^-121, and is then drawn again), so every value the field holds is a possible
secret. A device sends two shares to each of its k neighbours in one AEAD box (48 bytes with
the tag) and reveals one (16): 64 bytes per neighbour, where the prime 2^128 + 51 above 2^128
took 67 and 32-byte secrets over 2^256 + 297 took 115. The price: a reconstruction from a wrong
share is some other field element, itself a possible secret, so a wrong share is caught only
where the secret has a public commitment (a dropped device's mask key: recovery.py checks it
against the key it advertised). Small enough to own: no package on the index is both
maintained and general (tests/secagg/test_shamir.py checks primality and the properties above
over many seeds).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

SECRET_BYTES = 16
PRIME = 2**128 - 159
SHARE_BYTES = (PRIME.bit_length() + 7) // 8  # 16


@dataclass(frozen=True)
class Share:
    x: int  # the holder's point, 1 <= x < prime
    y: int  # f(x)


def split(secret: int, threshold: int, points: Sequence[int], prime: int = PRIME,
          randbelow: Callable[[int], int] = secrets.randbelow) -> list[Share]:
    """Shares of `secret` at `points`; any `threshold` of them reconstruct it. `randbelow`
    draws the polynomial's coefficients (a CSPRNG by default; tests pass a seeded one)."""
    if not 0 <= secret < prime:
        raise ValueError("the secret must lie in [0, prime)")
    if not 1 <= threshold <= len(points):
        raise ValueError(f"need 1 <= threshold ({threshold}) <= number of shares ({len(points)})")
    if len(set(points)) != len(points) or any(not 0 < x < prime for x in points):
        raise ValueError("share points must be distinct and in [1, prime)")
    coeffs = [secret] + [randbelow(prime) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coeffs, x, prime)) for x in points]


def reconstruct(shares: Sequence[Share], threshold: int, prime: int = PRIME) -> int:
    """The secret from at least `threshold` shares with distinct points (the first
    `threshold` are used). Fewer raises: t-1 shares determine nothing."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, need {threshold}")
    used = list(shares)[:threshold]
    xs = [s.x for s in used]
    if len(set(xs)) != len(xs):
        raise ValueError("shares must have distinct points")
    # Lagrange at 0: lambda_j = prod_{m != j} x_m / (x_m - x_j) = prod_m x_m / (x_j prod_{m != j}
    # (x_m - x_j)). The points are small (a device's index in its cohort), so the products are
    # taken exactly over small ints and reduced once; one inversion serves every j.
    everything = math.prod(xs) % prime
    total = sum(share.y * inverse for share, inverse in zip(used, _batch_inverse(_denominators(xs, prime), prime)))
    return everything * total % prime


def _denominators(xs: list[int], prime: int) -> list[int]:
    """x_j prod_{m != j} (x_m - x_j) mod prime for every j. The O(t^2) differences are the cost (the
    coordinator reconstructs a thousand secrets of t = 107 shares): for points below 2^20 they are
    formed in one int64 matrix and multiplied in groups whose product stays below 2^62 (exact),
    so Python multiplies t/g big numbers per row instead of t."""
    top = max(xs)
    if top >= 1 << 20:
        return [xj * math.prod(xm - xj for xm in xs if xm != xj) % prime for xj in xs]
    bits = max(1, top.bit_length())  # |x_m - x_j| < 2^bits
    group = max(1, 62 // bits)
    arr = np.asarray(xs, dtype=np.int64)
    diff = arr[None, :] - arr[:, None]  # (t, t): row j holds x_m - x_j, and x_j on the diagonal
    np.fill_diagonal(diff, arr)
    pad = -len(xs) % group
    if pad:
        diff = np.hstack([diff, np.ones((len(xs), pad), dtype=np.int64)])
    partial = diff.reshape(len(xs), -1, group).prod(axis=2)  # each |product| < 2^(bits * group) <= 2^62
    return [math.prod(row) % prime for row in partial.tolist()]


def _batch_inverse(values: list[int], prime: int) -> list[int]:
    """Every inverse mod prime with one modular inversion (Montgomery's trick)."""
    prefix, acc = [], 1
    for v in values:
        prefix.append(acc)
        acc = acc * v % prime
    inverse = pow(acc, -1, prime)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % prime
        inverse = inverse * values[i] % prime
    return out


def random_secret(randbytes: Callable[[int], bytes] = secrets.token_bytes) -> bytes:
    """SECRET_BYTES uniform below PRIME (rejection: a draw at or above it is drawn again)."""
    while True:
        secret = randbytes(SECRET_BYTES)
        if int.from_bytes(secret, "big") < PRIME:
            return secret


def secret_to_int(secret: bytes) -> int:
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, got {len(secret)}")
    value = int.from_bytes(secret, "big")
    if value >= PRIME:
        raise ValueError("a secret at or above the prime cannot be shared (draw it with random_secret)")
    return value


def int_to_secret(value: int) -> bytes:
    if not 0 <= value < 2 ** (8 * SECRET_BYTES):
        raise ValueError(f"a reconstructed value that is not a {SECRET_BYTES}-byte secret: a wrong share was used")
    return value.to_bytes(SECRET_BYTES, "big")


def _evaluate(coeffs: list[int], x: int, prime: int) -> int:
    acc = 0
    for c in reversed(coeffs):  # Horner
        acc = (acc * x + c) % prime
    return acc
