"""Files both sides write or read: atomic writes, and .npz loads that threads can share."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

Arrays = dict[str, np.ndarray]

# np.load parses .npy headers with ast.literal_eval, which on CPython 3.11 can fail with
# "SystemError: AST constructor recursion depth mismatch" when threads call it at once (a
# simulated fleet runs one device per thread). Loads are small; one lock per process is cheap.
_NPY_LOCK = threading.Lock()


def load_npz(path) -> Arrays:
    """Every array of an .npz file, loaded under the process-wide lock (see above)."""
    with _NPY_LOCK, np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file + fsync + rename so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
