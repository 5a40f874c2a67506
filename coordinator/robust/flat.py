"""Params dict <-> one flat vector, in sorted-name order, so rules see a (d,) row per update."""

from __future__ import annotations

import numpy as np

from .errors import RobustError

Params = dict[str, np.ndarray]


def flatten(params: Params) -> np.ndarray:
    """(d,) float64, names in sorted order."""
    if not params:
        return np.zeros(0)
    return np.concatenate([np.asarray(params[k], np.float64).ravel() for k in sorted(params)])


def unflatten(vec: np.ndarray, like: Params) -> Params:
    """Split a (d,) vector back into arrays shaped (and typed) like `like`."""
    out: Params = {}
    at = 0
    for k in sorted(like):
        ref = np.asarray(like[k])
        out[k] = np.asarray(vec[at : at + ref.size], np.float64).reshape(ref.shape).astype(ref.dtype)
        at += ref.size
    if at != np.size(vec):
        raise RobustError(f"vector has {np.size(vec)} values, the params {at}")
    return out
