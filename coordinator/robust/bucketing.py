"""Bucketing (Karimireddy, He, Jaggi, ICLR 2022, "Byzantine-robust learning on heterogeneous
datasets via bucketing"), a wrapper around any rule.

    1. draw a random permutation pi of the n updates;
    2. y_i = mean of x_pi(k) for k in bucket i = [(i-1)s, min(n, is)),  i = 1..ceil(n/s);
    3. return AGGR(y_1, ..., y_ceil(n/s)).

Averaging s updates shrinks the spread between honest ones (non-IID data makes them
disagree) while at most f buckets hold a Byzantine update, so the inner rule sees a more
homogeneous set. The last bucket, when n is not a multiple of s, is averaged over its actual
size (the paper's Algorithm 1 writes 1/s, which would shrink that bucket toward zero; the
authors' code divides by the bucket's size). The inner rule must be set for ceil(n/s) inputs
(e.g. Krum's f counts buckets, not devices).

Memory: O(k x model) for the updates, plus O(ceil(k/s) x model) for the buckets.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ._inputs import as_matrix
from .errors import BadRobustParameter

Rule = Callable[[np.ndarray], np.ndarray]  # (k, d) -> (d,)


def bucket_means(updates, s: int, rng: np.random.Generator) -> np.ndarray:
    """(ceil(k/s), d) bucket averages of a random permutation of the rows."""
    x = as_matrix(updates)
    if s < 1:
        raise BadRobustParameter(f"bucketing: bucket size s must be >= 1, got {s}")
    perm = rng.permutation(x.shape[0])
    return np.stack([x[perm[i : i + s]].mean(axis=0) for i in range(0, x.shape[0], s)])


def bucketing(updates, s: int, rule: Rule, rng: np.random.Generator) -> np.ndarray:
    """rule(bucket_means(updates, s, rng)) -> (d,) float64."""
    return np.asarray(rule(bucket_means(updates, s, rng)), np.float64)
