"""Shamir sharing of 16-byte seeds over the prime field 2^64 - 59: plain, or packed (a ramp).

The field is the largest prime below 2^64, p = 2^64 - 59. A seed is two 8-byte halves
(s0, s1), each below p (`random_secret` draws them so; a draw at or above p, probability
2^-58, is drawn again), so every value the field holds is a possible half.

packing 1, plain Shamir with threshold t: each half is the constant term of its own random
polynomial of degree t-1, and a holder's share of the seed is the pair of values at its
point, 16 bytes. Any t shares give the seed back (Lagrange at 0); any t-1 are uniformly
distributed whatever the seed (every t-1 values at non-zero points are hit by exactly one
polynomial for each constant term), so they reveal nothing.

packing 2, a ramp scheme (packed Shamir: Blakley and Meadows 1984, Franklin and Yung 1992):
one random polynomial of degree t-1 carries both halves, f(0) = s0 and f(-1) = s1, and a
holder's share is one value, 8 bytes. Any t shares give the seed back (Lagrange at 0 and at
-1). Any t-2 are uniform whatever the seed: f = s0 + (s0 - s1) x + x (x + 1) h(x) with h
uniform of degree t-3, and at t-2 points other than 0 and -1, h's values are uniform and
x (x + 1) is not zero. t-1 shares leave a line of 2^64 candidates: half the seed. So a
packed share is half the size of the seed it hides, which no perfect scheme allows, at the
price of one share of gap: callers use packing 2 only with a threshold two above what the
coordinator can collect of one kind (graph.py, rule 2), so it never holds more than t-2.

Either way, a reconstruction from t shares with a wrong one among them is some other pair of
field elements, itself a possible seed, so from t shares alone a wrong one is caught only where
the secret has a public commitment (a dropped device's mask key: recovery.py checks it against
the key it advertised). Given more than t, recover_seed also checks that the rest lie on the
polynomial the first t give (InconsistentShares otherwise), and recovery.py finds the holder. Small enough
to own: no package on the index is both maintained and general (tests/secagg/test_shamir.py
checks primality, the properties above over many seeds, and both reconstructions against a
plain Lagrange loop).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

PRIME = 2**64 - 59
HALF_BYTES = 8
SECRET_BYTES = 2 * HALF_BYTES  # a seed: two halves, each below PRIME
PACKINGS = (1, 2)


class InconsistentShares(ValueError):
    """More than t shares that no one polynomial of degree t-1 passes through: one is wrong."""


@dataclass(frozen=True)
class Share:
    x: int  # the holder's point, 1 <= x < prime
    y: int  # f(x)


def value_bytes(packing: int) -> int:
    """Bytes of one holder's share of one seed: 16 plain, 8 packed."""
    _check_packing(packing)
    return SECRET_BYTES // packing


def value_in_field(value: int, packing: int) -> bool:
    """Whether a share value read off the wire is made of field elements."""
    if packing == 1:
        return 0 <= value < 2 ** (8 * SECRET_BYTES) and (value >> 64) < PRIME and (value & (2**64 - 1)) < PRIME
    return 0 <= value < PRIME


def share_seed(seed: bytes, threshold: int, points: Sequence[int], packing: int,
               randbelow: Callable[[int], int] = secrets.randbelow) -> list[int]:
    """One share value per point (module docstring); any `threshold` of them give the seed back."""
    s0, s1 = _halves(seed)
    if packing == 1:
        lows = split(s0, threshold, points, randbelow=randbelow)
        highs = split(s1, threshold, points, randbelow=randbelow)
        return [(a.y << 64) | b.y for a, b in zip(lows, highs)]
    _check_packing(packing)
    _check_split(threshold, points, PRIME)
    if threshold < 2:
        raise ValueError("a packed share needs threshold >= 2 (a degree-1 polynomial through both halves)")
    if PRIME - 1 in points:
        raise ValueError("the point -1 holds the second half; no holder may sit there")
    h = [randbelow(PRIME) for _ in range(threshold - 2)]
    slope = (s0 - s1) % PRIME
    return [(s0 + slope * x + x * (x + 1) * _evaluate(h, x, PRIME)) % PRIME for x in points]


def recover_seed(shares: Sequence[tuple[int, int]], threshold: int, packing: int) -> bytes:
    """The seed from at least `threshold` (x, value) pairs with distinct points, from the first
    `threshold`; each share past them must lie on the polynomial those give, else
    InconsistentShares. Fewer than `threshold` raises ValueError; so does a value that is no share."""
    _check_packing(packing)
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, need {threshold}")
    used, extra = list(shares)[:threshold], list(shares)[threshold:]
    xs, extra_xs = [x for x, _ in used], [x for x, _ in extra]
    if len(set(xs + extra_xs)) != len(xs) + len(extra_xs):
        raise ValueError("shares must have distinct points")
    if not all(value_in_field(y, packing) for _, y in used + extra):
        raise ValueError("a share value that is no field element: a wrong share was used")
    if packing == 1:
        at_zero, *at_extra = _lagrange(xs, (0, *extra_xs))
        halves = [[y >> 64 for _, y in used], [y & (2**64 - 1) for _, y in used]]
        s0, s1 = (sum(v * c for v, c in zip(half, at_zero)) % PRIME for half in halves)
        predicted = [(sum(v * c for v, c in zip(halves[0], row)) % PRIME << 64)
                     | sum(v * c for v, c in zip(halves[1], row)) % PRIME for row in at_extra]
    else:
        at_zero, at_minus_one, *at_extra = _lagrange(xs, (0, -1, *extra_xs))
        s0 = sum(y * c for (_, y), c in zip(used, at_zero)) % PRIME
        s1 = sum(y * c for (_, y), c in zip(used, at_minus_one)) % PRIME
        predicted = [sum(y * c for (_, y), c in zip(used, row)) % PRIME for row in at_extra]
    for (x, y), want in zip(extra, predicted):
        if y != want:
            raise InconsistentShares(f"the share at point {x} is off the polynomial of the first {threshold}")
    return s0.to_bytes(HALF_BYTES, "big") + s1.to_bytes(HALF_BYTES, "big")


def split(secret: int, threshold: int, points: Sequence[int], prime: int = PRIME,
          randbelow: Callable[[int], int] = secrets.randbelow) -> list[Share]:
    """Plain Shamir shares of one field element at `points`; any `threshold` reconstruct it.
    `randbelow` draws the polynomial's coefficients (a CSPRNG by default; tests pass a seeded one)."""
    if not 0 <= secret < prime:
        raise ValueError("the secret must lie in [0, prime)")
    _check_split(threshold, points, prime)
    coeffs = [secret] + [randbelow(prime) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coeffs, x, prime)) for x in points]


def reconstruct(shares: Sequence[Share], threshold: int, prime: int = PRIME) -> int:
    """The element from at least `threshold` plain shares with distinct points (the first
    `threshold` are used). Fewer raises: t-1 shares determine nothing."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, need {threshold}")
    used = list(shares)[:threshold]
    xs = [s.x for s in used]
    if len(set(xs)) != len(xs):
        raise ValueError("shares must have distinct points")
    return sum(s.y * c for s, c in zip(used, _lagrange(xs, (0,), prime)[0])) % prime


def _lagrange(xs: list[int], ats: Sequence[int], prime: int = PRIME) -> list[list[int]]:
    """Lagrange coefficients at each point of `ats` (0, or 0 and -1): lambda_j = prod_{m != j}
    (x_m - at) / (x_m - x_j) = prod_m u_m / (u_j prod_{m != j} (x_m - x_j)) with u = x - at. The
    row products prod_{m != j} (x_m - x_j) serve every point, and one inversion serves them all."""
    rows = _row_products(xs, prime)
    denominators, numerators = [], []
    for at in ats:
        us = [(x - at) % prime for x in xs]
        numerators.append(math.prod(us) % prime)
        denominators.extend(u * r % prime for u, r in zip(us, rows))
    inverses = _batch_inverse(denominators, prime)
    t = len(xs)
    return [[top * inv % prime for inv in inverses[i * t:(i + 1) * t]] for i, top in enumerate(numerators)]


def _row_products(xs: list[int], prime: int) -> list[int]:
    """prod_{m != j} (x_m - x_j) mod prime for every j. The O(t^2) differences are the cost (the
    coordinator reconstructs a thousand seeds from t = 113 shares each): for points below 2^20
    they are formed in one int64 matrix and multiplied in groups whose product stays below 2^62
    (exact), so Python multiplies t/g big numbers per row instead of t."""
    if max(xs) >= 1 << 20:
        return [math.prod(xm - xj for xm in xs if xm != xj) % prime for xj in xs]
    bits = max(1, max(xs).bit_length())  # |x_m - x_j| < 2^bits
    group = max(1, 62 // bits)
    arr = np.asarray(xs, dtype=np.int64)
    diff = arr[None, :] - arr[:, None]  # row j: x_m - x_j, and 0 on the diagonal
    np.fill_diagonal(diff, 1)
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
    """SECRET_BYTES whose two halves are uniform below PRIME (rejection: a half at or above it is drawn again)."""
    halves = []
    while len(halves) < 2:
        half = randbytes(HALF_BYTES)
        if int.from_bytes(half, "big") < PRIME:
            halves.append(half)
    return b"".join(halves)


def _halves(seed: bytes) -> tuple[int, int]:
    if len(seed) != SECRET_BYTES:
        raise ValueError(f"secrets are {SECRET_BYTES} bytes, got {len(seed)}")
    s0, s1 = int.from_bytes(seed[:HALF_BYTES], "big"), int.from_bytes(seed[HALF_BYTES:], "big")
    if max(s0, s1) >= PRIME:
        raise ValueError("a secret with a half at or above the prime cannot be shared (draw it with random_secret)")
    return s0, s1


def _check_packing(packing: int) -> None:
    if packing not in PACKINGS:
        raise ValueError(f"packing must be 1 (plain) or 2 (packed), got {packing}")


def _check_split(threshold: int, points: Sequence[int], prime: int) -> None:
    if not 1 <= threshold <= len(points):
        raise ValueError(f"need 1 <= threshold ({threshold}) <= number of shares ({len(points)})")
    if len(set(points)) != len(points) or any(not 0 < x < prime for x in points):
        raise ValueError("share points must be distinct and in [1, prime)")


def _evaluate(coeffs: list[int], x: int, prime: int) -> int:
    acc = 0
    for c in reversed(coeffs):  # Horner
        acc = (acc * x + c) % prime
    return acc
