"""One split of examples as a device or the simulator reads it from an .npz: the checks both
make before anything trains (a NaN loss or an ONNX Runtime index error mid-task otherwise).

Used by the device's own data file (device_config.load_local_data, at start and at each SIGHUP
reload) and by `fedge simulate --data` (tools/datasets.load_npz_dir), which adds what only
it knows: flattened features and a cap on the number of classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .kernel.errors import DatasetError


def check_split(file: Path, split: str, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 (its shape kept) and y as int64, or DatasetError naming the file and what is wrong."""
    xs, ys = f"x_{split}", f"y_{split}"
    if x.dtype.kind not in "iufb":  # bool features (flags, binarized pixels) are 0/1
        raise DatasetError(f"{file}: {xs} has dtype {x.dtype}; it must be numeric (int, float or bool)")
    if x.ndim < 2:
        raise DatasetError(f"{file}: {xs} has shape {x.shape}; it must be (examples, features...)")
    if y.ndim != 1:
        raise DatasetError(f"{file}: {ys} has shape {y.shape}; it must be 1-D (examples,), e.g. y.ravel()")
    if len(x) != len(y):
        raise DatasetError(f"{file}: {xs} has {len(x)} examples but {ys} has {len(y)}; they must match")
    if y.dtype.kind == "f":
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise DatasetError(f"{file}: {ys} holds non-integer values; labels must be class indices 0, 1, ...")
    elif y.dtype.kind not in "iub":  # bool: a binary task's labels, False/True = 0/1
        raise DatasetError(f"{file}: {ys} has dtype {y.dtype}; labels must be integers")
    if len(y) and y.min() < 0:
        raise DatasetError(f"{file}: {ys} has negative labels (min {y.min()}); labels must be 0, 1, ...")
    x32 = x.astype(np.float32)
    if not np.isfinite(x32).all():
        raise DatasetError(f"{file}: {xs} contains NaN or Inf (or values too large for float32); clean them")
    return x32, y.astype(np.int64)
