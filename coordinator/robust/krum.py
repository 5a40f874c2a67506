"""Krum and multi-Krum (Blanchard, El Mhamdi, Guerraoui, Stainer, NeurIPS 2017).

With n updates of which at most f are Byzantine (the paper needs 2f + 2 < n), the score of
update i is the sum of squared distances to its n - f - 2 nearest other updates:

    s(i) = sum_{i -> j} ||V_i - V_j||^2

Krum outputs the update with the lowest score. Multi-Krum (the paper's section 5) scores once,
keeps the m updates with the lowest scores and outputs their plain average; m = 1 is Krum and
m = n - f the usual choice. Equal scores are broken by arrival order (stable sort), so the
result does not depend on the RNG.

Memory: O(k x model) for the updates plus O(k^2) for the pairwise distances.
"""

from __future__ import annotations

import numpy as np

from ._inputs import as_matrix
from .errors import BadRobustParameter, TooManyByzantine


def _check(n: int, f: int) -> None:
    if f < 0:
        raise BadRobustParameter(f"Krum: f must be >= 0, got {f}")
    if not 2 * f + 2 < n:
        raise TooManyByzantine(f"Krum needs 2f + 2 < n: f={f} with n={n} updates (at most f={(n - 3) // 2})")


def krum_scores(updates, f: int) -> np.ndarray:
    """(n,) scores s(i); raises TooManyByzantine unless 2f + 2 < n."""
    x = as_matrix(updates)
    n = x.shape[0]
    _check(n, f)
    sq = np.einsum("ij,ij->i", x, x)
    # ||a - b||^2 = |a|^2 + |b|^2 - 2ab; clamp the rounding below zero.
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
    np.fill_diagonal(d2, np.inf)  # i is not its own neighbour
    nearest = np.sort(d2, axis=1)[:, : n - f - 2]
    return nearest.sum(axis=1)


def multi_krum_select(updates, f: int, m: int | None = None) -> np.ndarray:
    """Indices of the m updates with the lowest Krum scores (m=None: n - f)."""
    scores = krum_scores(updates, f)
    n = scores.shape[0]
    m = n - f if m is None else m
    if not 1 <= m <= n - f:
        raise BadRobustParameter(f"multi-Krum: m must be in [1, n - f] = [1, {n - f}], got {m}")
    return np.argsort(scores, kind="stable")[:m]


def multi_krum(updates, f: int, m: int | None = None) -> np.ndarray:
    """Average of the m best-scored updates -> (d,) float64."""
    x = as_matrix(updates)
    return x[multi_krum_select(x, f, m)].mean(axis=0)
