"""`[data] statistics = FILE`: the fleet's pooled training mean and std, which a device with
`standardize = true` applies instead of its own (kernel/features.py).

Why: under label skew each device's own mean follows its label mix, so a device holding one
class maps that class to zero, and the global model learns nothing that carries across devices
(README, Device config). The file is what `fedge data combine-moments` writes from the devices'
`fedge device moments` files: `mean` and `std`, float arrays of one example's feature shape.

It is read and checked at start and at each SIGHUP reload, with the data file: a file that is
missing, not an .npz, without those keys, of another shape than x_train's examples, or holding a
value that is not finite or a std that is not positive is a StatisticsFileError naming it (the
device refuses to start, or a reload keeps the old data), never a traceback."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np

from .kernel.errors import DatasetError
from .kernel.files import load_npz

KEYS = ("mean", "std")


class StatisticsFileError(DatasetError):
    """The fleet statistics file ([data] statistics) cannot be applied to this device's data."""


def load_fleet_statistics(path: str | Path, example_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std), float64 of `example_shape` (x_train's per-example shape), from `path`."""
    path = Path(path)
    where = f"[data] statistics {path}"
    arrays = read_npz_file(path, KEYS, StatisticsFileError, where, "`fedge data combine-moments`")
    out = []
    for key in KEYS:
        a = arrays[key]
        if a.shape != tuple(example_shape):
            raise StatisticsFileError(f"{where}: {key} has shape {a.shape}, where this device's examples have "
                                      f"{tuple(example_shape)}; the statistics are of another fleet's features")
        out.append(a.astype(np.float64))
    mean, std = out
    if not (np.isfinite(mean).all() and np.isfinite(std).all()):
        raise StatisticsFileError(f"{where}: a mean or std that is not finite")
    if (std <= 0).any():
        raise StatisticsFileError(f"{where}: a std of {std.min():g}; each must be above 0 (it divides)")
    return mean, std


def read_npz_file(path: Path, keys: tuple[str, ...], error: type[DatasetError], where: str,
                  writer: str) -> dict[str, np.ndarray]:
    """The arrays `keys` of the .npz at `path`, numbers each, or `error` naming `where` (the path,
    and the setting that named it) and `writer` (the command that writes such a file): for a
    missing file, a folder or FIFO, a file numpy cannot read, a missing key or a non-numeric array."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{where}: no such file ({writer} writes it)") from None
    except OSError as exc:
        raise error(f"{where}: cannot be read ({exc})") from None
    if not stat.S_ISREG(mode):  # a folder, or a FIFO the load would block on
        raise error(f"{where}: not a regular file; name the .npz {writer} wrote")
    try:
        arrays = load_npz(path, only=keys)
    except Exception as exc:  # noqa: BLE001 - any file numpy cannot read as an .npz: named, never a traceback
        raise error(f"{where}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise error(f"{where}: no {', '.join(missing)}; the file {writer} writes holds {', '.join(keys)}")
    for key in keys:
        if arrays[key].dtype.kind not in "fiu":
            raise error(f"{where}: {key} is {arrays[key].dtype}, not numbers")
    return arrays
