"""Which files of a `fedge simulate --data` folder are its clients: every `<client_id>.npz`,
the suffix in any case, and nothing else without a word.

The folder was listed with a case-sensitive glob("*.npz"), so a client saved as `c0.NPZ` (the
case some Windows and camera tools write) was left out of the run with no word: a probe
(2026-12-07, /tmp/data-zoo) ran 3 devices of a 4-file folder and reported them as the fleet.
Entries that are not .npz files (`labels.csv`, a client saved with np.save as `c0.npy`, a
sub-folder) are still not clients, but the load now names them in one warning line, and a folder
with none says what it holds instead of only "no .npz files".
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fedge.edge_runtime.kernel.errors import DatasetError

log = logging.getLogger("fedge.datasets")

SUFFIX = ".npz"


def client_files(root: Path, shown: int = 5) -> list[Path]:
    """The folder's client files, sorted by name, or DatasetError: the folder cannot be listed,
    holds no .npz file, or holds two whose names differ only in the suffix's case (one device id)."""
    try:  # glob finds nothing in a folder it may not read, and "no .npz files" misled
        names = sorted(os.listdir(root))
    except OSError as exc:
        raise DatasetError(f"{root}: cannot read the folder: {exc.strerror or exc}") from None
    visible = [n for n in names if not n.startswith(".")]
    hidden = [n for n in names if n.startswith(".") and _is_npz(n)]
    if hidden:  # macOS's ._name.npz copies (AppleDouble, not zip) stopped a run with a word about pickle
        log.warning("%s: skipped %d hidden file(s) (%s); rename them without the leading dot to use them", root,
                    len(hidden), _first(hidden, shown))
    files = [root / n for n in visible if _is_npz(n)]
    others = [n + ("/" if (root / n).is_dir() else "") for n in visible if not _is_npz(n)]
    if not files:
        held = f" (it holds {_first(others, shown)})" if others else ""
        raise DatasetError(f"{root}: no .npz files{held}; save one per client with x_train, y_train, x_test, y_test "
                           f"(numpy.savez(f'{{client_id}}.npz', ...))")
    by_id: dict[str, str] = {}
    for file in files:  # c0.npz beside c0.NPZ: two files, one device id (the name without its suffix)
        stem = file.stem
        if stem in by_id:
            raise DatasetError(f"{root}: {by_id[stem]} and {file.name} name the same device ({stem!r}: a file's name "
                               f"without .npz is its device's id); keep one of them")
        by_id[stem] = file.name
    if others:
        log.warning("%s: skipped %d entr%s that %s not .npz files (%s); only <client_id>.npz files are clients",
                    root, len(others), "y" if len(others) == 1 else "ies", "is" if len(others) == 1 else "are",
                    _first(others, shown))
    return files


def _is_npz(name: str) -> bool:
    return name.lower().endswith(SUFFIX) and len(name) > len(SUFFIX)


def _first(names: list[str], shown: int) -> str:
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
