"""Shamir shares with errors: the one polynomial they come from, when few enough are off it.

Shares of one secret are the values of a polynomial of degree < t (shamir.py) at distinct
points: a Reed-Solomon codeword. From n of them, `decode` finds that polynomial when at most
e = (n - t) // 2 are wrong, and says so (None) when no polynomial of degree < t agrees with all
but e of them (there is then at most one that does: two would agree on n - 2e >= t points).
recovery.py uses it to tell a dealer's fault from its holders': with at most e lying holders the
polynomial found is the dealer's; no polynomial, or one whose secret the dealer did not commit
to, means the dealer dealt no polynomial of degree < t, or more than e holders lied.

Gao's decoder (S. Gao, "A new algorithm for decoding Reed-Solomon codes", 2002): interpolate
all n points, run the extended Euclidean algorithm on that and prod (x - x_i) until the remainder's
degree drops below (n + t) / 2, divide. O(n^2) operations mod the prime (about 40 ms for
n = 200 here), pure integers; on the failure path only.
"""

from __future__ import annotations

from collections.abc import Sequence

from .shamir import _evaluate


def decode(points: Sequence[tuple[int, int]], degree_below: int, prime: int) -> list[int] | None:
    """The coefficients (constant first, `degree_below` of them) of the polynomial of degree <
    `degree_below` that all but at most (n - degree_below) // 2 of the (x, y) `points` lie on,
    or None when there is none. Points must have distinct x."""
    n, t = len(points), degree_below
    if t < 1 or n < t:
        return None
    xs, ys = [x % prime for x, _ in points], [y % prime for _, y in points]
    g0 = [1]
    for x in xs:
        g0 = _mul_linear(g0, x, prime)
    r_prev, r_cur = g0, _interpolate(xs, ys, g0, prime)
    v_prev, v_cur = [0], [1]
    while _degree(r_cur) >= (n + t) / 2:
        q, r = _divmod(r_prev, r_cur, prime)
        r_prev, r_cur = r_cur, r
        v_prev, v_cur = v_cur, _sub(v_prev, _mul(q, v_cur, prime), prime)
    f, rem = _divmod(r_cur, v_cur, prime)
    if _degree(rem) >= 0 or _degree(f) >= t:
        return None
    f = (f + [0] * t)[:t]
    if sum(_evaluate(f, x, prime) != y for x, y in zip(xs, ys)) > (n - t) // 2:
        return None
    return f


def _degree(p: list[int]) -> int:
    d = len(p) - 1
    while d >= 0 and p[d] == 0:
        d -= 1
    return d


def _mul_linear(p: list[int], root: int, prime: int) -> list[int]:
    """p * (x - root)."""
    out = [0] * (len(p) + 1)
    for i, c in enumerate(p):
        out[i + 1] = (out[i + 1] + c) % prime
        out[i] = (out[i] - root * c) % prime
    return out


def _interpolate(xs: list[int], ys: list[int], g0: list[int], prime: int) -> list[int]:
    """The polynomial of degree < n through the points: sum_i y_i w_i g0 / (x - x_i)."""
    out = [0] * len(xs)
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        if yi == 0:
            continue
        w = 1
        for j, xj in enumerate(xs):
            if j != i:
                w = w * (xi - xj) % prime
        scale = yi * pow(w, -1, prime) % prime
        quotient, carry = [0] * len(xs), 0  # g0 / (x - x_i), synthetic division from the top
        for k in range(len(xs), 0, -1):
            carry = (g0[k] + carry * xi) % prime
            quotient[k - 1] = carry
        out = [(a + scale * b) % prime for a, b in zip(out, quotient)]
    return out


def _divmod(num: list[int], den: list[int], prime: int) -> tuple[list[int], list[int]]:
    dn, dd = _degree(num), _degree(den)
    if dd < 0:
        raise ZeroDivisionError("division by the zero polynomial")
    if dn < dd:
        return [0], list(num)
    num, inv = list(num), pow(den[dd], -1, prime)
    quotient = [0] * (dn - dd + 1)
    for i in range(dn - dd, -1, -1):
        coeff = num[i + dd] * inv % prime
        quotient[i] = coeff
        if coeff:
            for j in range(dd + 1):
                num[i + j] = (num[i + j] - coeff * den[j]) % prime
    return quotient, num[:dd] or [0]


def _mul(a: list[int], b: list[int], prime: int) -> list[int]:
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        if x:
            for j, y in enumerate(b):
                out[i + j] = (out[i + j] + x * y) % prime
    return out


def _sub(a: list[int], b: list[int], prime: int) -> list[int]:
    n = max(len(a), len(b))
    a, b = a + [0] * (n - len(a)), b + [0] * (n - len(b))
    return [(x - y) % prime for x, y in zip(a, b)]
