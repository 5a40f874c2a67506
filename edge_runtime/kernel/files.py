"""Files both sides write or read: atomic writes, and .npz loads that threads can share."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import DeviceStateError

Arrays = dict[str, np.ndarray]

# np.load parses .npy headers with ast.literal_eval, which on CPython 3.11 can fail with
# "SystemError: AST constructor recursion depth mismatch" when threads call it at once (a
# simulated fleet runs one device per thread). Loads are small; one lock per process is cheap.
NPY_LOCK = threading.Lock()


def load_npz(path, only: tuple[str, ...] | None = None) -> Arrays:
    """Every array of an .npz file (or those named in `only` that it holds: the others are
    not read), loaded under the process-wide lock (see above)."""
    with NPY_LOCK, np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files if only is None or k in only}


class DurableWrites:
    """Counts fsync'd writes by kind of file (the name with its ids and digits taken out,
    e.g. "r-.msg" for pending updates), process-wide and thread-safe: `fedge bench ingest` and
    the tests read how many durable writes a device task costs. Kinds are few, so it stays small."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, path: Path) -> None:
        kind = _KIND.sub("", path.name)
        with self._lock:
            self._counts[kind] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self._counts)


_KIND = re.compile(r"[0-9a-f]{8,}|[0-9]+")  # hex ids and numbers: what varies between files of one kind
DURABLE_WRITES = DurableWrites()
_TEMP = ".tmp-"  # atomic_write_bytes's temp file for <name>: .<name>.tmp-<pid>
_TEMP_NAME = re.compile(r"\.(.+)" + re.escape(_TEMP) + r"([0-9]+)")


class TooLarge(OSError):
    """read_capped: the file holds more than the caller's cap (not a file fedge wrote)."""


def read_capped(path: Path, max_bytes: int) -> bytes:
    """A small file fedge wrote itself, read whole: OSError where it is not a regular file (a FIFO
    would block the read forever, /dev/zero fill memory: manifest.open_regular), TooLarge past
    max_bytes (read no further than that)."""
    from .manifest import open_regular  # manifest imports nothing of this module: no cycle

    with open_regular(Path(path)) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(f"{path}: over {max_bytes} bytes")
    return data


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True, mode: int | None = None) -> None:
    """Write via a temp file + rename so readers never see a half-written file.

    mode: the new file's permission bits exactly (0o600 for a secret), set on the temp file before
    any data goes in, so the secret is never readable by others even for a moment; None: 0o666
    less the umask. The file at `path` is replaced, never chmodded.

    durable: fsync the data before the rename, so a power cut leaves the old or the new file
    (counted in DURABLE_WRITES). Without it the write survives a killed process (the kernel
    holds it) but a power cut may lose it or, on a filesystem that does not order the data
    before the rename, leave the file empty; use it only for files whose loss is harmless
    (each caller says why)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TEMP}{os.getpid()}")
    # O_NOFOLLOW: a link planted at the temp name (its name is predictable) fails the write
    # instead of having its target overwritten; the real path is replaced by the rename, never followed
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    created = 0o666 if mode is None else mode
    fh = os.fdopen(os.open(tmp, flags, created), "wb")  # closed by the with below; only a temp file it made is removed
    try:
        with fh:
            if mode is not None:  # exactly, whatever the umask (and a stale temp file at its name kept its own)
                os.fchmod(fh.fileno(), mode)
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if durable:
            DURABLE_WRITES.add(path)
        os.replace(tmp, path)
    except BaseException:  # a path that is a folder, a full disk: the temp file once stayed behind
        tmp.unlink(missing_ok=True)
        raise


def sweep_temp_files(root: Path) -> list[Path]:
    """Delete the temp files atomic_write_bytes left under `root` when its process was killed
    mid-write (kill -9, a power cut before the rename): they stayed forever, one per crash.
    Only regular files named `.<name>.tmp-<pid>` for a pid that no longer runs (not this
    process's: a live writer's file is left to it); links, folders and other names are never
    touched. Returns the paths deleted."""
    swept = []
    for folder, _, names in os.walk(root):  # does not follow links to folders
        for name in names:
            match = _TEMP_NAME.fullmatch(name)
            if match is None or int(match.group(2)) == os.getpid() or pid_running(int(match.group(2))):
                continue
            path = Path(folder) / name
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                path.unlink()
            except OSError:  # gone meanwhile, or not ours to change: leave it
                continue
            swept.append(path)
    return swept


def file_in_the_way(path: Path) -> Path | None:
    """The file that stands at `path` or where one of its folders goes (the nearest existing
    one, when it is no folder), or None: a mkdir there ends in NotADirectoryError or
    FileExistsError. A missing path is not in the way: the mkdir makes it."""
    for folder in (path, *path.parents):
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def pid_running(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # someone else's; or no pid fedge could have used:
        return True  # either way, not known to be dead, so left alone
    return True


def set_aside(path: Path) -> Path:
    """Rename a file fedge wrote and cannot read back to `<name>.damaged` beside it (`.damaged-1`,
    ... if that is taken: nothing is overwritten), out of the names fedge reads but kept for a
    person to look at; deleting it would lose what a recovery tool might still read. The new path;
    DeviceStateError naming the file when it cannot be renamed (a read-only folder: a bare OSError
    stopped the start)."""
    for n in range(1000):
        target = path.with_name(f"{path.name}.damaged{f'-{n}' if n else ''}")
        if not os.path.lexists(target):
            try:
                os.rename(path, target)
            except OSError as exc:
                raise DeviceStateError(f"{path} cannot be read, nor set aside ({exc}); move it aside") from exc
            return target
    raise DeviceStateError(f"{path} cannot be read, and 1000 damaged copies are already set aside beside it")
