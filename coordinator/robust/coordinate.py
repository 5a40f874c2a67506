"""Coordinate-wise rules (Yin, Chen, Ramchandran, Bartlett, ICML 2018).

For k updates x_1..x_k in R^d, coordinate j of the result is

    median:        med{x_1j, ..., x_kj}   (k even: mean of the two middle values)
    trimmed mean:  (1 / (k - 2b)) * sum of the k - 2b middle values of {x_ij},  b = floor(beta * k)

Both are unweighted, as in the paper: a device's claimed example count is its own word, and
a rule that counts it would let one claim outvote everyone (the "huge weight" attack).

Memory: O(k x model) -- both keep every update of the round (np.sort / np.median over axis 0).
"""

from __future__ import annotations

import math

import numpy as np

from ._inputs import as_matrix
from .errors import BadRobustParameter


def coordinate_median(updates) -> np.ndarray:
    """Coordinate-wise median of a (k, d) matrix -> (d,) float64."""
    return np.median(as_matrix(updates), axis=0)


def trim_count(k: int, beta: float) -> int:
    """b = floor(beta * k) values dropped at each end."""
    if not (0.0 <= beta < 0.5):
        raise BadRobustParameter(f"trimmed mean: beta must be in [0, 0.5), got {beta}")
    # beta < 0.5 keeps k - 2b >= 1 for every k >= 1: b <= beta * k < k / 2.
    return math.floor(beta * k)


def trimmed_mean(updates, beta: float) -> np.ndarray:
    """Coordinate-wise beta-trimmed mean of a (k, d) matrix -> (d,) float64."""
    x = as_matrix(updates)
    b = trim_count(x.shape[0], beta)
    s = np.sort(x, axis=0)
    return s[b : x.shape[0] - b].mean(axis=0)
