"""Centered clipping (Karimireddy, He, Jaggi, ICML 2021, "Learning from history for
Byzantine robust optimization").

Starting from a center v_0 (the previous round's aggregate, or its server momentum), L
iterations of

    v_{l+1} = v_l + (1/n) * sum_i (x_i - v_l) * min(1, tau / ||x_i - v_l||)

An update farther than tau from the center moves it by at most tau / n, so no single input
can drag the result far; an update at the center (||x_i - v_l|| = 0) adds nothing.
Unweighted, as in the paper.

Memory: O(k x model): every iteration revisits all k updates. (With L = 1 the sum could be
streamed, but the rule is used with several iterations.)
"""

from __future__ import annotations

import numpy as np

from ._inputs import as_matrix
from .errors import BadRobustParameter, RobustError


def clip_scale(norms: np.ndarray, tau: float) -> np.ndarray:
    """min(1, tau / norm) elementwise, with 1 where norm = 0."""
    norms = np.asarray(norms, np.float64)
    scale = np.ones_like(norms)
    over = norms > tau  # only these divide: tau = inf over a norm of inf was inf / inf, with numpy's warning
    scale[over] = tau / norms[over]
    return scale


def centered_clipping(updates, tau: float, iterations: int = 1, center=None) -> np.ndarray:
    """The center after `iterations` clipping steps -> (d,) float64. center=None starts at 0."""
    x = as_matrix(updates)
    if not tau > 0:  # inf is allowed: nothing is clipped, one step lands on the mean
        raise BadRobustParameter(f"centered clipping: tau must be > 0, got {tau}")
    if iterations < 1:
        raise BadRobustParameter(f"centered clipping: iterations must be >= 1, got {iterations}")
    v = np.zeros(x.shape[1]) if center is None else np.array(center, dtype=np.float64)
    if v.shape != (x.shape[1],) or not np.all(np.isfinite(v)):
        raise RobustError(f"centered clipping: center must be a finite ({x.shape[1]},) vector")
    for _ in range(iterations):
        diff = x - v
        scale = clip_scale(np.linalg.norm(diff, axis=1), tau)
        v = v + (diff * scale[:, None]).mean(axis=0)
    return v
