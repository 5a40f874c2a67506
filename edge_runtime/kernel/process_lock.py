"""One process per state: an exclusive flock on a lock file, held for the process's life.

The coordinator holds `<state_db>.lock` (coordinator/state_lock.py) and the device
`<state_dir>/<device_id>/device.lock` (edge_runtime/device_lock.py). The kernel drops a flock
when its holder exits however it exits (kill -9 included), so a stale lock file never blocks a
restart: the file stays, and means nothing while no process holds it. The holder writes its pid
into it, so a refusal can say which process to stop; the pid is only ever read for that message.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import FedgeError, ServiceUnavailable

log = logging.getLogger("fedge.lock")

_PID_BYTES = 32  # more than any pid and its newline
# O_NOFOLLOW: the holder truncates the file to write its pid, so a link planted at the lock's name
# would have its target emptied (with the service's rights); O_NONBLOCK: where opening a FIFO for
# reading and writing may block (Linux never does), the regular-file check below still gets to refuse it.
_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK

# The descriptors of the locks this process holds. A forked child (the coordinator's unmask
# workers, kernel/secagg/masking.py) closes its copies at once: a flock belongs to the open file,
# so children that outlived a holder killed with -9 kept its lock, and a restart was refused
# naming a pid that no longer existed. The parent's lock is untouched by a child's close.
_HELD: set[int] = set()


def _close_in_child() -> None:
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


@contextmanager
def process_lock(path: Path, refusal: Callable[[str], str], cannot_open: Callable[[OSError], FedgeError],
                 owner_of: Path | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `path` (made 0600 if missing) for the block.
    refusal(holder): the ServiceUnavailable message when another process holds it; holder reads
    "pid N holds <path>", or "it holds <path>" when the file names no pid (an older holder's).
    owner_of: a lock file this call creates is given that file's owner and group (a command run
    as root beside a service: a root-owned 0600 lock would keep the service's user out). Only a
    file this call just created is changed, never one that was there.
    cannot_open(exc): the error to raise when the file cannot be opened (a missing folder, no
    permission, a folder by its name): the caller's words for its own setting."""
    try:
        fd, created = _open_lock(path)
    except OSError as exc:
        raise cannot_open(exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO or device by its name: nothing of ours to write in
            raise cannot_open(OSError(errno.EINVAL, "not a regular file"))
        if created and owner_of is not None:
            _give_owner(fd, path, owner_of)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder_pid(fd)
            raise ServiceUnavailable(refusal(f"{'it' if pid is None else f'pid {pid}'} holds {path}")) from None
        _HELD.add(fd)
        if _ours(fd, created):
            _write_pid(fd)  # only into a lock file of ours: a file by its name that we did not write is left as it is
        yield
    finally:
        _HELD.discard(fd)
        os.close(fd)  # releases the lock


def _ours(fd: int, created: bool) -> bool:
    """Created now, or empty or holding a pid (an older fedge's lock file was empty), and the one
    name of its file: a hard link planted at the lock's name would have its other name emptied."""
    info = os.fstat(fd)
    return info.st_nlink == 1 and (created or not info.st_size or _holder_pid(fd) is not None)


def _open_lock(path: Path) -> tuple[int, bool]:
    """(descriptor, whether this call created the file)."""
    try:
        return os.open(path, _FLAGS | os.O_EXCL, 0o600), True
    except FileExistsError:
        return os.open(path, _FLAGS, 0o600), False  # O_CREAT: removed since, made again


def _give_owner(fd: int, path: Path, owner_of: Path) -> None:
    try:
        want, have = os.stat(owner_of), os.fstat(fd)
        if (want.st_uid, want.st_gid) != (have.st_uid, have.st_gid):
            os.fchown(fd, want.st_uid, want.st_gid)
    except OSError as exc:  # not root: it stays ours, and we may open it; the service's user may not
        log.warning("%s: could not give it %s's owner (%s); remove it if the service cannot open it", path,
                    owner_of, exc.strerror or exc)


def _write_pid(fd: int) -> None:
    """Our pid, in place of the last holder's; a full disk leaves it empty (the lock holds all the same)."""
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError:
        pass


def _holder_pid(fd: int) -> int | None:
    """The pid the holder wrote, or None: an empty file (the holder between truncate and write),
    or anything else someone put there."""
    try:
        text = os.pread(fd, _PID_BYTES, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and 0 < int(text) < 2**31 else None
