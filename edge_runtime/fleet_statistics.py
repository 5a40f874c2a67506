"""`[data] statistics = FILE`: the fleet's pooled training mean and std, which a device with
`standardize = true` applies instead of its own (kernel/features.py).

Why: under label skew each device's own mean follows its label mix, so a device holding one
class maps that class to zero, and the global model learns nothing that carries across devices
(README, Device config). The file is what `fedge data combine-moments` writes from the devices'
`fedge device moments` files: `mean` and `std`, float arrays of one example's feature shape.

It is read and checked at start and at each SIGHUP reload, with the data file: a file that is
missing, not an .npz, without those keys, of another layout than x_train's examples (size-1
axes aside, as kernel/features.example_layout: (4, 4) statistics apply to (1, 4, 4) examples),
or holding a value that is not finite or a std that is not positive is a StatisticsFileError
naming it (the device refuses to start, or a reload keeps the old data), never a traceback. The
arrays are read by npz_members.py with a limit of what two arrays of the device's example shape
take: a 1 MB file whose mean inflates to 1 GiB is refused from its header, before a byte of it
is allocated (np.load took over 1 GiB before the shape check)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .kernel.errors import DatasetError
from .kernel.features import shape_layout
from .npz_members import NpzLimits, read_npz_members

KEYS = ("mean", "std")
STATISTICS_BY = "fedge data combine-moments"  # the tool that writes the file (its written_by, tools/fleet_moments.py)


class StatisticsFileError(DatasetError):
    """The fleet statistics file ([data] statistics) cannot be applied to this device's data."""


def load_fleet_statistics(path: str | Path, example_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), float64 of `example_shape` (x_train's per-example shape), from `path`."""
    path, example_shape = Path(path), tuple(example_shape)
    where = f"[data] statistics {path}"
    limits = NpzLimits(len(KEYS) * math.prod(example_shape) * 8, 8, "statistics file",
                       f"name the .npz `{STATISTICS_BY}` wrote",
                       f" for this device's examples of shape {example_shape}; the statistics are of another fleet's "
                       "features", StatisticsFileError)
    arrays = read_numbers(path, KEYS, limits, where)
    out = []
    for key in KEYS:
        a = arrays[key]
        if shape_layout(a.shape) != shape_layout(example_shape):
            raise StatisticsFileError(f"{where}: {key} has shape {a.shape}, where this device's examples have "
                                      f"{example_shape}; the statistics are of another fleet's features")
        out.append(a.astype(np.float64).reshape(example_shape))  # the same values in the same order
    mean, std = out
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise StatisticsFileError(f"{where}: a mean or std that is not finite")
    if (std <= 0).any():
        raise StatisticsFileError(f"{where}: a std of {std.min():g}; each must be above 0 (it divides)")
    return mean, std


def read_numbers(path: Path, keys: tuple[str, ...], limits: NpzLimits, where: str) -> dict[str, np.ndarray]:
    """read_npz_members' arrays `keys`, each numbers (integers or floats), or limits.error naming `where`."""
    arrays = read_npz_members(path, keys, limits, where)
    for key in keys:
        if arrays[key].dtype.kind not in "fiu":
            raise limits.error(f"{where}: {key} is {arrays[key].dtype}, not numbers")
    return arrays
