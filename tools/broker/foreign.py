"""Files fedge writes where the operator's may already be (a provisioned config folder, a broker's
work folder): a path holding anything other than what fedge would write there, or recognizes as
its own earlier copy (`ours`), is left byte-identical and named in a ForeignFile."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import ForeignFile

# Larger than what fedge would write by this much: foreign, judged from its size, unread (a work
# folder's stray multi-gigabyte file must not be read into memory to be compared).
SIZE_SLACK = 1 << 20  # bytes; any earlier render or ACL fedge wrote is within a few KiB of today's


def refuse_foreign(files: Mapping[Path, bytes], *, overwrite: bool = False,
                   ours: Callable[[Path, bytes], bool] = lambda path, old: False,
                   advice: str = "move them") -> None:
    """Unless overwrite: ForeignFile naming every path of `files` (path -> the bytes fedge would
    write) that is a link, not a regular file, unreadable, or holds other bytes that `ours`
    (path, the bytes there) does not claim."""
    if overwrite:
        return
    kept = [str(path) for path, data in files.items() if _foreign(path, data, ours)]
    if kept:
        raise ForeignFile(f"{', '.join(kept)} already exist{'s' if len(kept) == 1 else ''} with other content; "
                          f"fedge does not replace them: {advice}")


def _foreign(path: Path, data: bytes, ours: Callable[[Path, bytes], bool]) -> bool:
    if path.is_symlink():
        return True
    if not path.exists():
        return False
    if not path.is_file():
        return True
    try:
        if path.stat().st_size > len(data) + SIZE_SLACK:
            return True
        old = path.read_bytes()
    except OSError:  # unreadable: not a file fedge wrote for itself
        return True
    return old != data and not ours(path, old)
