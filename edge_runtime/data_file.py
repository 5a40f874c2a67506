"""Reading one data .npz, a device's own (`[data] npz`) or one of a `fedge simulate --data`
folder's, as the hostile input it may be (npz_members.py): the four arrays, or DatasetError
naming the file and what is wrong with it, before anything is allocated for an array that
cannot be (a 3 MB file whose x_train inflates to 3 GiB is refused from its header)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from .kernel.errors import DatasetError
from .kernel.files import NPY_LOCK
from .npz_members import DAMAGE, NpzLimits, npy_header, read_npz_members

DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")
# What one file's four arrays may take once loaded, counted as float32 (what x becomes; a uint8
# image takes 4 bytes a value once loaded): MNIST's 70,000 images are 220 MB, CIFAR-10's
# 60,000 are 737 MB, so a device's own file, or one client's, fits with room to spare.
MAX_DATA_BYTES = 1 << 30
_REMEDY = f"save the four arrays in one file: numpy.savez(path, {', '.join(f'{k}={k}' for k in DATA_KEYS)})"


def read_data_npz(path: str | Path) -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test of one .npz (other arrays in it are not read), or
    DatasetError naming the file. Arrays come as saved; examples.check_split checks their
    contents."""
    limits = NpzLimits(MAX_DATA_BYTES, 4, "data file", _REMEDY, "; split it into smaller files or devices")
    return read_npz_members(path, DATA_KEYS, limits)


def feature_dtype(path: str | Path) -> np.dtype | None:
    """The dtype x_train was saved in, from its .npy header alone (`fedge device export` says
    which scaling its model's input expects: check_split reads uint8 as x / 255), or None when
    the file cannot tell (absent, damaged, not a data file)."""
    path = Path(path)
    try:
        if not path.is_file():  # a FIFO would block the open
            return None
        with zipfile.ZipFile(path) as zf:
            info = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}.get("x_train")  # as read_data_npz
            if info is None:
                return None
            with zf.open(info) as fh, NPY_LOCK:
                return npy_header(str(path), info, fh)[2]
    except (DatasetError, *DAMAGE):
        return None
