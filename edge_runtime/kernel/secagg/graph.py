"""The round's neighbour graph (SecAgg+, Bell et al. 2020) and the choice of k and t.

Each device masks with, and shares its secrets to, only its k neighbours, so a device's work
and upload grow with k, not n. The graph is a Harary-style circulant over a seeded random
order of the cohort: position p is joined to p +- 1, ..., p +- k/2. The order comes from the
round's public seed, so every party builds the same graph, and the coordinator, which picks
the cohort, cannot place a victim among devices of its choosing after the seed is fixed.

k and t (`choose_parameters`), for a cohort of n, a dropout rate delta, a rate gamma of
devices that collude with the coordinator, a security parameter sigma and a correctness
parameter eta (all three bounds union-bounded over the n devices):

  1. corrupt neighbours: c = the smallest c with n * P[Bin(k, gamma) > c] <= 2^-sigma;
  2. an honest neighbour reveals, for one device, either its self-mask share or its mask-key
     share, never both (the unmask checks in `session.reveal`), so the coordinator with c
     corrupt neighbours gets c + h1 shares of one kind and c + h2 of the other with
     h1 + h2 <= k - c: at most floor((k + c) / 2) of one of the kinds. With plain Shamir
     (packing 1, complete graphs) t - 1 shares reveal nothing: t = floor((k + c) / 2) + 1.
     With packed shares (packing 2, sparse graphs: shamir.py, a ramp scheme whose shares are
     half the size) only t - 2 reveal nothing: t = floor((k + c) / 2) + 2. Either way the
     colluders alone stay below that;
  3. enough survivors: n * P[Bin(k, 1 - delta) < t] <= 2^-eta, so every device's secrets
     can be recovered when it drops;
  4. the honest survivors stay connected (otherwise the coordinator learns the sums of the
     parts): conservatively, no run of k/2 consecutive positions is all dropped or corrupt,
     n * (delta + gamma)^(k/2) <= 2^-sigma.

k is the smallest even number meeting all four, which grows as (sigma + log2 n) / log2(1 /
(delta + gamma)) * 2: the c * log2 n of SecAgg+. Where it would reach n - 1 the graph is
complete (plain SecAgg) and t follows rule 2 with plain shares.

Why sparse graphs pack: a neighbour costs a device its two shares in one AEAD box (16-byte
tag) and one revealed share; plain 16-byte shares make that 64 bytes, packed 8-byte shares 40.
At n = 1,000 that is 13.6 kB (k = 212) against 8.9 kB (k = 222) per device and round (the masked input itself is
225 kB at b = 8), for one more neighbour in t. Complete graphs stay plain: they are small
cohorts, where one more share in t costs a larger share of the dropout tolerance (n = 4: t = 3
of 3 neighbours, none may drop), and where bytes per neighbour matter less.

The packing is not a field on the wire: both sides derive it from the graph's shape
(`packing_for`: sparse, k < n - 1, packs), and a device refuses a threshold below
`threshold_floor` for it (with gamma = 0: what rule 2 needs when no device colludes).

Defaults: sigma = 40, eta = 20, delta = 0.3, gamma = 0 (a coordinator that may deviate, but
controls no device: keys are signed and a device's unmask checks refuse inconsistent
requests). n = 20: complete, k = 19, t = 10; n = 100: complete, k = 99, t = 50 (complete up
to n = 205); n = 500: k = 214, t = 109; n = 1000: k = 222, t = 113; n = 10,000: k = 248,
t = 126 (with plain shares these were 204/103, 212/107 and 238/120). Rule 3 sets k here (a
30% dropout rate leaves fewer than k/2 + 2 of k neighbours with probability below 2^-30 only
from k ~ 200). Colluding devices cost much more: gamma = 0.01 gives k = 334, t = 182 at
n = 1000, gamma = 0.05 k = 508, t = 292. Chosen for the guarantee, never
tuned for bytes; pass gamma > 0 where devices may be compromised.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GraphParameters:
    neighbours: int  # k
    threshold: int  # t
    corrupt_bound: int  # c: neighbours assumed colluding, with probability 1 - 2^-sigma
    packing: int = 1  # shamir packing: 2 (packed shares) on sparse graphs, 1 (plain) on complete ones


def packing_for(k: int, n: int) -> int:
    """The Shamir packing of a round whose graph has degree k over a cohort of n: 2 (packed)
    when the graph is sparse, 1 (plain) when it is complete. Both sides derive it."""
    return 2 if k < n - 1 else 1


def threshold_floor(k: int, n: int) -> int:
    """The least t that keeps a device's secrets private when no neighbour colludes (rule 2 with
    c = 0): above k/2 for plain shares, one more for packed ones."""
    return k // 2 + packing_for(k, n)


def _log_binom_pmf(k: int, i: int, p: float) -> float:
    if p <= 0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1:
        return 0.0 if i == k else -math.inf
    return (math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1)
            + i * math.log(p) + (k - i) * math.log1p(-p))


def _tail_above(k: int, p: float, c: int) -> float:
    """P[Bin(k, p) > c]."""
    return sum(math.exp(_log_binom_pmf(k, i, p)) for i in range(c + 1, k + 1))


def _tail_below(k: int, p: float, t: int) -> float:
    """P[Bin(k, p) < t]."""
    return sum(math.exp(_log_binom_pmf(k, i, p)) for i in range(0, min(t, k + 1)))


@functools.lru_cache(maxsize=64)  # the coordinator asks once per round, with the same few arguments
def threshold_for(k: int, n: int, corrupt: float = 0.0, sigma: int = 40) -> int:
    """Rule 2's t for a graph of degree k over n (k chosen elsewhere, e.g. configured), with the
    colluding neighbours rule 1 bounds for `corrupt`: at least threshold_floor(k, n). It may
    exceed k (more colluders than the graph can hide a device from); no t is safe then."""
    k = min(k, n - 1)
    return _for_degree(k, n, corrupt, sigma, packing_for(k, n))[1]


def _for_degree(k: int, n: int, gamma: float, sigma: int, packing: int) -> tuple[int, int]:
    bound = 2.0 ** -sigma / n
    c = next(c for c in range(k + 1) if _tail_above(k, gamma, c) <= bound)
    return c, (k + c) // 2 + packing


@functools.lru_cache(maxsize=64)  # pure, and seconds of binomial tails at large n or corrupt > 0
def choose_parameters(n: int, dropout: float = 0.3, corrupt: float = 0.0, sigma: int = 40,
                      eta: int = 20) -> GraphParameters:
    """k, t and c for a cohort of n (module docstring)."""
    if n < 2:
        raise ValueError("secure aggregation needs at least 2 devices")
    if not (0 <= dropout < 1 and 0 <= corrupt < 1 and dropout + corrupt < 1):
        raise ValueError("need 0 <= dropout, corrupt and dropout + corrupt < 1")
    for k in range(2, n - 1, 2):
        c, t = _for_degree(k, n, corrupt, sigma, packing=2)
        if t > k:
            continue
        if n * _tail_below(k, 1 - dropout, t) > 2.0 ** -eta:
            continue
        if n * (dropout + corrupt) ** (k // 2) > 2.0 ** -sigma:
            continue
        return GraphParameters(k, t, c, packing=2)
    k = n - 1  # complete graph: plain SecAgg, plain shares
    c, t = _for_degree(k, n, corrupt, sigma, packing=1)
    return GraphParameters(k, min(t, k), c, packing=1)


def neighbour_graph(devices: list[str] | tuple[str, ...], k: int, seed: int) -> dict[str, tuple[str, ...]]:
    """device -> its neighbours (sorted), k-regular for even k < n - 1, complete for k >= n - 1."""
    order = sorted(devices)
    n = len(order)
    if len(set(order)) != n:
        raise ValueError("device ids must be distinct")
    if k >= n - 1:
        return {d: tuple(x for x in order if x != d) for d in order}
    if k < 2 or k % 2:
        raise ValueError(f"a circulant neighbour graph needs an even k >= 2, got {k}")
    perm = [order[i] for i in np.random.default_rng([seed, 0x5EC]).permutation(n)]
    half = k // 2
    return {perm[p]: tuple(sorted(perm[(p + s) % n] for s in range(-half, half + 1) if s))
            for p in range(n)}


def neighbours_of(devices: list[str] | tuple[str, ...], k: int, seed: int, device: str) -> tuple[str, ...]:
    """neighbour_graph(devices, k, seed)[device], without the rest of the graph: O(n log n) for a
    cohort of n where the whole graph is O(n k), O(n^2) complete. A device needs only its own
    row, and the cohort is the coordinator's word: a directory of 6,000 ids took 17 s to build
    the whole graph on a device, and the wire allows 100,000."""
    order = sorted(devices)
    n = len(order)
    if len(set(order)) != n:
        raise ValueError("device ids must be distinct")
    if device not in order:
        raise ValueError(f"{device!r} is not in the cohort")
    if k >= n - 1:
        return tuple(x for x in order if x != device)
    if k < 2 or k % 2:
        raise ValueError(f"a circulant neighbour graph needs an even k >= 2, got {k}")
    perm = np.random.default_rng([seed, 0x5EC]).permutation(n)  # the same draw as neighbour_graph's
    p = int(np.flatnonzero(perm == order.index(device))[0])
    half = k // 2
    return tuple(sorted(order[perm[(p + s) % n]] for s in range(-half, half + 1) if s))
