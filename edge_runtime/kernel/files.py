"""Files both sides write or read: atomic writes, and .npz loads that threads can share."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]

# np.load parses .npy headers with ast.literal_eval, which on CPython 3.11 can fail with
# "SystemError: AST constructor recursion depth mismatch" when threads call it at once (a
# simulated fleet runs one device per thread). Loads are small; one lock per process is cheap.
_NPY_LOCK = threading.Lock()


def load_npz(path, only: tuple[str, ...] | None = None) -> Arrays:
    """Every array of an .npz file (or those named in `only` that it holds: the others are
    not read), loaded under the process-wide lock (see above)."""
    with _NPY_LOCK, np.load(path, allow_pickle=False) as data:
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


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write via a temp file + rename so readers never see a half-written file.

    durable: fsync the data before the rename, so a power cut leaves the old or the new file
    (counted in DURABLE_WRITES). Without it the write survives a killed process (the kernel
    holds it) but a power cut may lose it or, on a filesystem that does not order the data
    before the rename, leave the file empty; use it only for files whose loss is harmless
    (each caller says why)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fh = open(tmp, "wb")  # noqa: SIM115 - closed by the with below; only a temp file it made is removed
    try:
        with fh:
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
