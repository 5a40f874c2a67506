"""One coordinator per SQLite state_db.

Two `fedge coordinator serve` started on the same state_db by mistake (a second unit, a test
run beside the service) both resumed the open round from it and both wrote to it; they also
share one broker identity, so each kept taking the other's MQTT session. Over Mosquitto the
first died within a second with GroupCommitFailed (a UNIQUE constraint: the other had stored
the same update) and the second went on alone. PostgreSQL has its leader lease for this
(leadership.py); SQLite gets an exclusive flock on `<state_db>.lock`, held for the process's
life and dropped by the kernel when it exits however it exits (kill -9 included), so a stale
lock cannot block a restart. A second service is refused at start as ServiceUnavailable
(exit 1: a supervisor tries again, and gets in once the first has stopped).
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError, ServiceUnavailable

log = logging.getLogger("fedge.coordinator")


@contextmanager
def state_db_lock(state_db: str | Path, owner_of: Path | None = None):
    """Hold `<state_db>.lock` (made if missing) for the block; ServiceUnavailable if held.
    owner_of: a lock file this call creates is given that file's owner and group (a command run
    as root beside the service: a root-owned 0600 lock would keep the service's user out).
    Only a file this call just created is changed, never one that was there."""
    path = Path(f"{state_db}.lock")
    try:
        fd, created = _open_lock(path)
    except FileNotFoundError:  # a traceback before: state_db in a folder that does not exist
        raise ConfigError(f"state_db {state_db}: no folder {path.parent} to keep it in; create it, or point "
                          "state_db elsewhere") from None
    except OSError as exc:  # no permission, a read-only filesystem, a folder named <state_db>.lock
        raise ConfigError(f"state_db {state_db}: cannot create its lock file {path}: {exc.strerror or exc}") from None
    try:
        if created and owner_of is not None:
            _give_owner(fd, path, owner_of)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ServiceUnavailable(f"state_db {state_db} is in use by another coordinator (it holds {path}); "
                                     "stop that one first, or point state_db elsewhere") from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _open_lock(path: Path) -> tuple[int, bool]:
    """(descriptor, whether this call created the file)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), True
    except FileExistsError:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600), False  # O_CREAT: removed since, made again


def _give_owner(fd: int, path: Path, owner_of: Path) -> None:
    try:
        want, have = os.stat(owner_of), os.fstat(fd)
        if (want.st_uid, want.st_gid) != (have.st_uid, have.st_gid):
            os.fchown(fd, want.st_uid, want.st_gid)
    except OSError as exc:  # not root: it stays ours, and we may open it; the service's user may not
        log.warning("%s: could not give it %s's owner (%s); remove it if the service cannot open it", path,
                    owner_of, exc.strerror or exc)
