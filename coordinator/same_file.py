"""Whether a path still names the file that was opened through it: one definition (device and
inode) for the SQLite state_db (state_file.py) and the payload log's round files (payload_log.py).

A file deleted (or replaced) under an open descriptor lives on in that descriptor, unnamed; its
path then names no file, or another one. Writes through the descriptor succeed and vanish at the
process's end, so before writing, the path's identity is compared with the one opened.

"Names no file" includes a path whose folder is no longer a folder (ENOTDIR: the folder was moved
away and a file made at its name): os.stat raised NotADirectoryError there, which surfaced as an
unnamed OSError instead of the file's being gone.
"""

from __future__ import annotations

import os
from pathlib import Path

Identity = tuple[int, int]  # (st_dev, st_ino)


def file_identity(path: str | Path) -> Identity | None:
    """(device, inode) of the file `path` names now; None when it names none."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_dev, st.st_ino


def descriptor_identity(fd: int) -> Identity:
    """(device, inode) of the file open as `fd`, named or not."""
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def same_file(path: str | Path, fd: int) -> bool | None:
    """Whether `path` names the file open as `fd`; None when it names no file (deleted)."""
    named = file_identity(path)
    return None if named is None else named == descriptor_identity(fd)
