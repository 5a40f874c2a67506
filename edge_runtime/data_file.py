"""Reading one data .npz, a device's own (`[data] npz`) or one of a `fedge simulate --data`
folder's, as the hostile input it may be: the four arrays, or DatasetError naming the file and
what is wrong with it, before anything is allocated for an array that cannot be.

np.load trusts the file: it allocates what an array's .npy header claims before reading a byte
of it, and inflates a member as far as the zip says. A probe (benchmarks/results/
2026-12-06-npz-fuzz) gave both loaders a 3 MB .npz whose x_train inflates to 3 GiB of zeros:
each took 3.1 GB and 34-57 s before a length check refused it (on a 1 GB Pi, the OOM killer
first). So each member's header is read first (a few hundred bytes inflated), and its array is
allocated and read only when its claimed size fits both the member's stated size (a header
that lies is refused, not allocated) and, with the arrays before it, MAX_DATA_BYTES. Other
damage is named rather than passed on in numpy's words: a plain .npy renamed .npz (np.load
returned an ndarray, and the simulator stopped in a TypeError traceback), a folder, a FIFO, a
file that is not a zip. Nothing is unpickled: an object array is refused from its header, and
the arrays are read as raw bytes (np.load and pickle are never called).
"""

from __future__ import annotations

import lzma
import math
import stat
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .kernel.errors import DatasetError
from .kernel.files import NPY_LOCK

DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")
# What one file's four arrays may take once loaded, counted as float32 (what x becomes; a uint8
# image takes 4 bytes a value once loaded): MNIST's 70,000 images are 220 MB, CIFAR-10's
# 60,000 are 737 MB, so a device's own file, or one client's, fits with room to spare.
MAX_DATA_BYTES = 1 << 30
_HEADER_MAX = 10_000  # bytes of .npy header numpy itself accepts without allow_pickle
_NPY_MAGIC = b"\x93NUMPY"
# What zipfile, its decompressors and numpy's header parser raise for a file they cannot read:
# not a zip, a bad CRC, a compression zipfile lacks (NotImplementedError), a damaged deflate or
# LZMA stream (zlib.error, LZMAError; bz2 says OSError), an encrypted member (RuntimeError),
# header text the parser trips on (SyntaxError, TokenError, TypeError for a shape of (True, 4)).
_DAMAGE = (zipfile.BadZipFile, OSError, ValueError, EOFError, SyntaxError, zipfile.LargeZipFile,
           NotImplementedError, zlib.error, lzma.LZMAError, RuntimeError, tokenize.TokenError, TypeError)


def read_data_npz(path: str | Path) -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test of one .npz (other arrays in it are not read), or
    DatasetError naming the file. Arrays come as saved; examples.check_split checks their
    contents."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:  # also a link to nothing
        raise DatasetError(f"{path}: no such data file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot be read ({exc})") from None
    if stat.S_ISDIR(mode):
        raise DatasetError(f"{path}: is a folder, not a data file; save one with numpy.savez")
    if not stat.S_ISREG(mode):  # a FIFO would block the open forever, a device would be read to its end
        raise DatasetError(f"{path}: not a regular file; save the data with numpy.savez")
    try:
        with path.open("rb") as raw, zipfile.ZipFile(_zip_or_refuse(path, raw)) as zf:
            members = {info.filename.removesuffix(".npy"): info for info in zf.infolist()}
            missing = [k for k in DATA_KEYS if k not in members]
            if missing:
                held = ", ".join(sorted(members)) or "nothing"
                raise DatasetError(f"{path}: no {', '.join(missing)} (it holds {held}); a data file holds "
                                   f"{', '.join(DATA_KEYS)} (numpy.savez with those names)")
            arrays, loaded = {}, 0
            for k in DATA_KEYS:
                with zf.open(members[k]) as fh:
                    with NPY_LOCK:  # numpy parses headers with ast, which threads once broke (kernel/files.py)
                        shape, fortran, dtype = _header(path, members[k], fh)
                    loaded += math.prod(shape) * max(dtype.itemsize, 4)
                    if loaded > MAX_DATA_BYTES:
                        raise DatasetError(f"{path}: {k} has shape {shape} of {dtype}, which brings the file's "
                                           f"arrays to {loaded / 2**30:.1f} GiB loaded; a data file may hold "
                                           f"{MAX_DATA_BYTES / 2**30:.0f} GiB (as float32); split it into smaller "
                                           f"files or devices")
                    arrays[k] = _body(path, members[k], fh, shape, fortran, dtype)
            return arrays
    except DatasetError:
        raise
    except _DAMAGE as exc:
        raise DatasetError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc}); "
                           f"re-save it with numpy.savez") from None


def _zip_or_refuse(path: Path, raw):
    """raw, rewound, unless it starts as a .npy file does (np.save's output renamed .npz)."""
    if raw.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
        raise DatasetError(f"{path}: is a single .npy array (numpy.save) renamed .npz; save all four arrays in "
                           f"one file: numpy.savez(path, {', '.join(f'{k}={k}' for k in DATA_KEYS)})")
    raw.seek(0)
    return raw


def _header(path: Path, info: zipfile.ZipInfo, fh) -> tuple[tuple[int, ...], bool, np.dtype]:
    """One member's (shape, fortran_order, dtype) from its .npy header, checked against the
    member's stated size: an array is allocated only for what the member can hold."""
    name = info.filename
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh, max_header_size=_HEADER_MAX)
        elif version in ((2, 0), (3, 0)):  # 3.0: 2.0's layout with a UTF-8 header (np.load reads both)
            # 2.0's reader decodes as Latin-1: the same text for a numeric dtype's ASCII header
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh, max_header_size=_HEADER_MAX)
        else:
            raise DatasetError(f"{path}: {name} is .npy version {version}; re-save it with numpy.savez")
    except (ValueError, SyntaxError, tokenize.TokenError, TypeError) as exc:  # numpy parses the header with ast
        raise DatasetError(f"{path}: {name} is not a .npy array ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise DatasetError(f"{path}: {name} holds Python objects (dtype {dtype}), which only pickle can read, and "
                           f"fedge never unpickles a data file; save numeric arrays (labels as integers)")
    if dtype.itemsize == 0:
        raise DatasetError(f"{path}: {name} has dtype {dtype}, of no bytes per value; save numeric arrays")
    claimed, held = math.prod(shape) * dtype.itemsize, max(info.file_size - fh.tell(), 0)
    if claimed > held:
        raise DatasetError(f"{path}: {name}'s header claims shape {shape} of {dtype} ({claimed:,} bytes) but the "
                           f"file holds {held:,}; the file is damaged or was not written by numpy.savez")
    return shape, fortran, dtype


def _body(path: Path, info: zipfile.ZipInfo, fh, shape: tuple[int, ...], fortran: bool,
          dtype: np.dtype) -> np.ndarray:
    """The array whose header was just read from fh, read into a buffer of its claimed size."""
    flat = np.empty(math.prod(shape), dtype)
    view, got = memoryview(flat.view(np.uint8)), 0  # a memoryview of datetime64 itself is refused
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise DatasetError(f"{path}: {info.filename} ends after {got:,} of its {len(view):,} bytes; "
                               f"the file is damaged")
        got += n
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


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
                return _header(path, info, fh)[2]
    except (DatasetError, *_DAMAGE):
        return None
