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
  2. t = floor((k + c) / 2) + 1. An honest neighbour reveals, for one device, either its
     self-mask share or its mask-key share, never both (the unmask checks in `masking`),
     so the coordinator with c corrupt neighbours gets c + h1 shares of one kind and c + h2
     of the other with h1 + h2 <= k - c: 2t > k + c keeps it below t for one of them;
     t > c keeps the colluders alone below t;
  3. enough survivors: n * P[Bin(k, 1 - delta) < t] <= 2^-eta, so every device's secrets
     can be recovered when it drops;
  4. the honest survivors stay connected (otherwise the coordinator learns the sums of the
     parts): conservatively, no run of k/2 consecutive positions is all dropped or corrupt,
     n * (delta + gamma)^(k/2) <= 2^-sigma.

k is the smallest even number meeting all four, which grows as (sigma + log2 n) / log2(1 /
(delta + gamma)) * 2: the c * log2 n of SecAgg+. Where it would reach n - 1 the graph is
complete (plain SecAgg) and t follows rule 2.

Defaults: sigma = 40, eta = 20, delta = 0.3, gamma = 0 (a coordinator that may deviate, but
controls no device: keys are signed and a device's unmask checks refuse inconsistent
requests). n = 20: complete, k = 19, t = 10; n = 100: complete, k = 99, t = 50; n = 500:
k = 204, t = 103; n = 1000: k = 212, t = 107; n = 10,000: k = 238, t = 120. Rule 3 sets k
here (a 30% dropout rate leaves fewer than k/2 + 1 of k neighbours with probability below
2^-30 only from k ~ 200). Colluding devices cost much more: gamma = 0.01 gives k = 318,
t = 172 at n = 1000, gamma = 0.05 k = 494, t = 283. Chosen for the guarantee, never
tuned for bytes; pass gamma > 0 where devices may be compromised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class GraphParameters:
    neighbours: int  # k
    threshold: int  # t
    corrupt_bound: int  # c: neighbours assumed colluding, with probability 1 - 2^-sigma


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


def _for_degree(k: int, n: int, gamma: float, sigma: int) -> tuple[int, int]:
    bound = 2.0 ** -sigma / n
    c = next(c for c in range(k + 1) if _tail_above(k, gamma, c) <= bound)
    return c, (k + c) // 2 + 1


def choose_parameters(n: int, dropout: float = 0.3, corrupt: float = 0.0, sigma: int = 40,
                      eta: int = 20) -> GraphParameters:
    """k, t and c for a cohort of n (module docstring)."""
    if n < 2:
        raise ValueError("secure aggregation needs at least 2 devices")
    if not (0 <= dropout < 1 and 0 <= corrupt < 1 and dropout + corrupt < 1):
        raise ValueError("need 0 <= dropout, corrupt and dropout + corrupt < 1")
    for k in range(2, n - 1, 2):
        c, t = _for_degree(k, n, corrupt, sigma)
        if t > k:
            continue
        if n * _tail_below(k, 1 - dropout, t) > 2.0 ** -eta:
            continue
        if n * (dropout + corrupt) ** (k // 2) > 2.0 ** -sigma:
            continue
        return GraphParameters(k, t, c)
    k = n - 1  # complete graph: plain SecAgg
    c, t = _for_degree(k, n, corrupt, sigma)
    return GraphParameters(k, min(t, k), c)


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
