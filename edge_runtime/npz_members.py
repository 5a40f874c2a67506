"""Reading named arrays of an .npz as the hostile input it may be: each array, or the caller's
DatasetError naming the file and what is wrong with it, before anything is allocated for an
array that cannot be. One reader for a device's data file (data_file.py), the fleet statistics
file ([data] statistics) and `fedge data combine-moments`' moments files.

np.load trusts the file: it allocates what an array's .npy header claims before reading a byte
of it, and inflates a member as far as the zip says. A probe (benchmarks/results/
2026-12-06-npz-fuzz) gave both loaders a 3 MB .npz whose x_train inflates to 3 GiB of zeros:
each took 3.1 GB and 34-57 s before a length check refused it (on a 1 GB Pi, the OOM killer
first); a 1 MB statistics file whose mean inflates to 1 GiB took over 1 GiB of memory (a
review's probe) before its shape check. So each member's header is read first (a few hundred bytes inflated), and its
array is allocated and read only when its claimed size fits both the member's stated size (a
header that lies is refused, not allocated) and, with the arrays before it, the caller's limit.
Other damage is named rather than passed on in numpy's words: a plain .npy renamed .npz, a
folder, a FIFO, a file that is not a zip. Nothing is unpickled: an object array is refused from
its header, and the arrays are read as raw bytes (np.load and pickle are never called)."""

from __future__ import annotations

import lzma
import math
import stat
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .kernel.errors import DatasetError
from .kernel.files import NPY_LOCK

_HEADER_MAX = 10_000  # bytes of .npy header numpy itself accepts without allow_pickle
_NPY_MAGIC = b"\x93NUMPY"
# What zipfile, its decompressors and numpy's header parser raise for a file they cannot read:
# not a zip, a bad CRC, a compression zipfile lacks (NotImplementedError), a damaged deflate or
# LZMA stream (zlib.error, LZMAError; bz2 says OSError), an encrypted member (RuntimeError),
# header text the parser trips on (SyntaxError, TokenError, TypeError for a shape of (True, 4)).
DAMAGE = (zipfile.BadZipFile, OSError, ValueError, EOFError, SyntaxError, zipfile.LargeZipFile,
          NotImplementedError, zlib.error, lzma.LZMAError, RuntimeError, tokenize.TokenError, TypeError)


@dataclass(frozen=True)
class NpzLimits:
    """What a file may hold, and how its refusals read. max_bytes: the arrays read, loaded, in
    all; each value counted as at least min_itemsize bytes (what the caller converts it to:
    float32 for a data file's x, float64 for statistics). where: the file as the message names
    it (its path, and the setting that named it); kind: "data file", ...; remedy: how to make a
    good one; over_limit: what to do about a file over max_bytes."""
    max_bytes: int
    min_itemsize: int
    kind: str
    remedy: str
    over_limit: str = ""
    error: type[DatasetError] = DatasetError


def read_npz_members(path: str | Path, keys: tuple[str, ...], limits: NpzLimits,
                     where: str | None = None) -> dict[str, np.ndarray]:
    """The arrays `keys` of the .npz at `path` (other arrays in it are not read), as saved, or
    limits.error naming `where` (default: the path)."""
    path = Path(path)
    where = str(path) if where is None else where
    error, kind, remedy = limits.error, limits.kind, limits.remedy
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:  # also a link to nothing
        raise error(f"{where}: no such {kind}; {remedy}") from None
    except OSError as exc:
        raise error(f"{where}: cannot be read ({exc})") from None
    if stat.S_ISDIR(mode):
        raise error(f"{where}: is a folder, not a {kind}; {remedy}")
    if not stat.S_ISREG(mode):  # a FIFO would block the open forever, a device would be read to its end
        raise error(f"{where}: not a regular file; {remedy}")
    try:
        with path.open("rb") as raw, zipfile.ZipFile(_zip_or_refuse(where, raw, limits)) as zf:
            members = {}
            for info in zf.infolist():
                name = info.filename.removesuffix(".npy")
                if name in members:  # numpy reads the last one: which array a reader sees is not the file's to hide
                    raise error(f"{where}: holds two arrays named {name} ({members[name].filename} and "
                                f"{info.filename}); a {kind} holds each of {', '.join(keys)} once; {remedy}")
                members[name] = info
            missing = [k for k in keys if k not in members]
            if missing:
                held = ", ".join(sorted(members)) or "nothing"
                raise error(f"{where}: no {', '.join(missing)} (it holds {held}); a {kind} holds {', '.join(keys)}; "
                            f"{remedy}")
            arrays, loaded = {}, 0
            for k in keys:
                with zf.open(members[k]) as fh:
                    with NPY_LOCK:  # numpy parses headers with ast, which threads once broke (kernel/files.py)
                        shape, fortran, dtype = npy_header(where, members[k], fh, error)
                    loaded += math.prod(shape) * max(dtype.itemsize, limits.min_itemsize)
                    if loaded > limits.max_bytes:
                        raise error(f"{where}: {k} has shape {shape} of {dtype}, which brings the file's arrays to "
                                    f"{_amount(loaded, limits, '.1f')} loaded; a {kind} may hold "
                                    f"{_amount(limits.max_bytes, limits, '.0f')}{limits.over_limit}")
                    arrays[k] = _body(where, members[k], fh, shape, fortran, dtype, error)
            return arrays
    except DatasetError:
        raise
    except DAMAGE as exc:
        raise error(f"{where}: not a readable .npz file ({type(exc).__name__}: {exc}); {remedy}") from None


def _amount(n: int, limits: NpzLimits, gib_format: str) -> str:
    """n bytes in the unit of the limit: GiB for a limit of a GiB or more (a data file's), MiB for
    one of a MiB or more (a moments file's 48 MiB: in GiB it read "may hold 0 GiB"), else bytes (a
    statistics file's)."""
    if limits.max_bytes >= 2**30:
        return f"{n / 2**30:{gib_format}} GiB"
    return f"{n / 2**20:{gib_format}} MiB" if limits.max_bytes >= 2**20 else f"{n:,} bytes"


def _zip_or_refuse(where: str, raw, limits: NpzLimits):
    """raw, rewound, unless it starts as a .npy file does (np.save's output renamed .npz)."""
    if raw.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
        raise limits.error(f"{where}: is a single .npy array (numpy.save) renamed .npz; {limits.remedy}")
    raw.seek(0)
    return raw


def npy_header(where: str, info: zipfile.ZipInfo, fh,
               error: type[DatasetError] = DatasetError) -> tuple[tuple[int, ...], bool, np.dtype]:
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
            raise error(f"{where}: {name} is .npy version {version}; re-save it with numpy.savez")
    except (ValueError, SyntaxError, tokenize.TokenError, TypeError) as exc:  # numpy parses the header with ast
        raise error(f"{where}: {name} is not a .npy array ({type(exc).__name__}: {exc})") from None
    if dtype.hasobject:
        raise error(f"{where}: {name} holds Python objects (dtype {dtype}), which only pickle can read, and "
                    f"fedge never unpickles a file it reads; save numeric arrays (labels as integers)")
    if dtype.itemsize == 0:
        raise error(f"{where}: {name} has dtype {dtype}, of no bytes per value; save numeric arrays")
    claimed, held = math.prod(shape) * dtype.itemsize, max(info.file_size - fh.tell(), 0)
    if claimed > held:
        raise error(f"{where}: {name}'s header claims shape {shape} of {dtype} ({claimed:,} bytes) but the "
                    f"file holds {held:,}; the file is damaged or was not written by numpy.savez")
    return shape, fortran, dtype


def _body(where: str, info: zipfile.ZipInfo, fh, shape: tuple[int, ...], fortran: bool, dtype: np.dtype,
          error: type[DatasetError]) -> np.ndarray:
    """The array whose header was just read from fh, read into a buffer of its claimed size."""
    flat = np.empty(math.prod(shape), dtype)
    view, got = memoryview(flat.view(np.uint8)), 0  # a memoryview of datetime64 itself is refused
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            raise error(f"{where}: {info.filename} ends after {got:,} of its {len(view):,} bytes; "
                        f"the file is damaged")
        got += n
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
