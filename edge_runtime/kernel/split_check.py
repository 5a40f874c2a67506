"""The checks every reader of a split of examples makes before anything trains or scores on it:
a device's own data file and `fedge simulate --data` (edge_runtime/examples.py, which adds one
layout across splits) and the coordinator's guard set (coordinator/holdout.py, which may import
only the kernel). Numeric x of at least one feature, one class index per example (a column taken
as a row), no negative, non-integer or too-large label, finite features; x as float32 with uint8
read as x / 255 (kernel/features.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .errors import DatasetError
from .features import as_features

# The most classes any model has (models/spec.py MAX_CLASSES, which the device cannot import): a
# label at or past it cannot be a class index of any model. Checked before the cast to int64,
# which wrapped a uint64 label of 2**63 + 5 and a float 1e20 to negative labels that loaded.
MODEL_MAX_CLASSES = 100_000


def check_split(file: Path, split: str, x: np.ndarray, y: np.ndarray,
                example_shape: tuple[int, ...] | None = None,
                max_classes: int = MODEL_MAX_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 (its shape kept; uint8, the pixel type, scaled from 0..255 to 0..1) and y as
    int64 (a (n, 1) column taken as (n,)), or DatasetError naming the file and what is wrong.
    example_shape (a test split's: its x_train's per-example shape): an empty x saved as
    np.array([]), shape (0,), is taken as no examples of that shape; without it, as any 1-D x, refused.
    max_classes: labels must be below it (the simulator's cap is lower: tools/datasets.py; the
    coordinator's guard set gives its model's classes). split "": the arrays are named x and y."""
    xs, ys = (f"x_{split}", f"y_{split}") if split else ("x", "y")
    if x.shape == (0,) and example_shape is not None:  # np.array([]): "no test examples", saved without a shape
        x = x.reshape(0, *example_shape)
    if x.dtype.kind not in "iufb":  # bool features (flags, binarized pixels) are 0/1
        raise DatasetError(f"{file}: {xs} has dtype {x.dtype}; it must be numeric (int, float or bool)")
    if x.ndim < 2:
        raise DatasetError(f"{file}: {xs} has shape {x.shape}; it must be (examples, features...)")
    if math.prod(x.shape[1:]) == 0:
        raise DatasetError(f"{file}: {xs} has shape {x.shape}, i.e. no features per example")
    y = _labels_1d(file, ys, y)
    if len(x) != len(y):
        raise DatasetError(f"{file}: {xs} has {len(x)} examples but {ys} has {len(y)}; they must match")
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DatasetError(f"{file}: {ys} holds non-integer values; labels must be class indices 0, 1, ...")
    elif y.dtype.kind not in "iub":  # bool: a binary task's labels, False/True = 0/1
        raise DatasetError(f"{file}: {ys} has dtype {y.dtype}; labels must be integers (strings or codes: map them "
                           f"to 0..K-1 with one map for every file, e.g. np.unique(..., return_inverse=True))")
    if len(y) and y.min() < 0:
        raise DatasetError(f"{file}: {ys} has negative labels (min {y.min()}); labels must be 0, 1, ...")
    if len(y) and y.max() >= max_classes:  # compared in y's own dtype: the cast below would wrap
        raise DatasetError(f"{file}: {ys} has label {y.max()}; labels must be class indices 0 .. "
                           f"{max_classes - 1} (the model has one output per class up to the largest label)")
    x32 = as_features(x)  # uint8 / 255: the one rule (kernel/features.py)
    if not np.isfinite(x32).all():
        raise DatasetError(f"{file}: {xs} contains NaN or Inf (or values too large for float32); clean them")
    return x32, y.astype(np.int64)


def _labels_1d(file: Path, ys: str, y: np.ndarray) -> np.ndarray:
    """y as (n,): a (n, 1) column is taken as it; one-hot rows and other shapes are refused."""
    if y.ndim == 2 and y.shape[1] == 1:
        return y.reshape(-1)
    if y.ndim == 1:
        return y
    onehot = y.ndim == 2 and y.dtype.kind in "iufb" and len(y) and ((y == 0) | (y == 1)).all() and (y.sum(1) == 1).all()
    hint = "one-hot rows: save y.argmax(axis=1)" if onehot else "save one class index per example"
    raise DatasetError(f"{file}: {ys} has shape {y.shape}; it must be 1-D (examples,) of class indices ({hint})")
