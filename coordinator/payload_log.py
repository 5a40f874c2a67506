"""The open round's update payloads, in one append-only file per round beside the SQLite store.

Why not in SQLite: a 100 KB blob in a WAL database is written twice (into the WAL, then by the
checkpoint into the database file), 25 pages at a time, each page checksummed, and the
checkpoint's fsyncs come on top of the commit's. Draining a backlog of 100 KB updates
(`fedge bench ingest`), those writes took 2.8 of 4.2 s under cProfile. Here a burst's
payloads are appended to the round's file with one write each and one fsync for the burst,
and the SQLite row keeps only where they are (offset, lengths) next to the digest.

Layout: `<state_db>.payloads/` (made by fedge, with the marker file FEDGE-PAYLOADS in it), one
`round-<id>.log` per round that has accepted updates: each update's payload then its control
bytes, back to back. Nothing else is read or written there.

The crash argument (store.py) holds with one more step. `append` writes the bytes and
fsyncs them (and the folder entry of the file, at a process's first append to it) *before* the
rows pointing at them, which is before the Acks. Killed between the two: the file has bytes no
row points at, the updates were not acked, their devices send them again, and the next append
goes after those bytes (offsets come from the file's size, never from memory). A row is
therefore never committed pointing at bytes that are not durable. Closing a round deletes its
file after the transaction that closes it. Killed in between, `sweep` at the next open
deletes the files of rounds that are no longer open.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.files import pid_running

from .errors import StoreCorrupt
from .same_file import same_file

log = logging.getLogger("fedge.coordinator.payloads")

MARKER = "FEDGE-PAYLOADS"
_ROUND_FILE = re.compile(r"round-([0-9]+)\.log")


class PayloadLog:
    def __init__(self, directory: Path, *, durable: bool = True):
        self.directory = Path(directory)
        self.durable = durable
        self._files: dict[int, int] = {}  # round id -> an O_RDWR | O_APPEND descriptor
        # Rounds whose file's folder entry this process has fsynced: a file made by a failed
        # append, or by a process killed before its folder fsync, is synced by the next append.
        self._entry_synced: set[int] = set()
        self._folder_synced = False
        if self.directory.exists() and not (self.directory / MARKER).is_file():
            # Never write into (or later delete from) a folder fedge did not make.
            raise ConfigError(f"{self.directory} exists but was not made by fedge (no {MARKER} in it); "
                              f"move it away or point state_db elsewhere")

    def append(self, round_id: int, blobs: list[bytes]) -> list[int]:
        """Append the blobs to the round's file, durably (one fsync); their offsets, in order."""
        if not self.directory.exists():  # made at the first append (readers of the db make nothing),
            self._make_directory()  # or again if someone deleted it while the coordinator ran
            self._folder_synced = False
        if not self._folder_synced:
            self._sync_directory(self.directory.parent)
            self._folder_synced = True
        fd, created = self._open(round_id, create=True)
        if not created:
            fd = self._put_back_if_unlinked(round_id, fd)
        # One writer at a time (the offsets come from the size): a second coordinator pointed at
        # the same state_db by mistake waits here instead of interleaving bytes.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            return self._append_locked(round_id, fd, blobs)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def _append_locked(self, round_id: int, fd: int, blobs: list[bytes]) -> list[int]:
        start = os.fstat(fd).st_size
        offsets, at = [], start
        try:
            for blob in blobs:
                offsets.append(at)
                view = memoryview(blob)
                while view:  # os.write may write less than asked (a signal, a full disk)
                    written = os.write(fd, view)
                    view = view[written:]
                at += len(blob)
            if self.durable:
                os.fsync(fd)
            if round_id not in self._entry_synced:
                self._sync_directory(self.directory)
                self._entry_synced.add(round_id)
        except BaseException:
            os.ftruncate(fd, start)  # leave no partial tail; a failed append committed nothing
            raise
        return offsets

    def _put_back_if_unlinked(self, round_id: int, fd: int) -> int:
        """The round's descriptor, after putting its file back where the path no longer names it.

        The file (or the whole folder) deleted while the coordinator ran, by an operator tidying
        up: appends went on into the unlinked file and rounds still committed from memory, but a
        restart found rows pointing at bytes no file held (StoreCorrupt: the acked updates of
        the open round lost). The bytes are all still in the open descriptor: they are copied to
        a new file at the path, durably, before anything else is appended. A different file at
        the path is not fedge's to write over: StoreCorrupt, naming it."""
        path = self._path(round_id)
        named = same_file(path, fd)
        if named:
            return fd
        if named is False:
            raise StoreCorrupt(f"{path} was replaced by another file while the coordinator was running; "
                               f"move it away (the round's payloads are not in it) and restart")
        held = os.fstat(fd)
        try:
            fresh = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:  # its folder replaced by a file, made read-only, ...: the bytes have no place
            raise StoreCorrupt(f"{path} was deleted while the coordinator was running and its {held.st_size} bytes "
                               f"(the open round's accepted updates) cannot be written back there: {exc.strerror}; "
                               f"put {self.directory} back as a folder and restart") from None
        try:
            at = 0
            while at < held.st_size:
                chunk = os.pread(fd, min(1 << 20, held.st_size - at), at)
                if not chunk:
                    raise StoreCorrupt(f"{path}: the deleted file's {held.st_size} bytes could not be read back")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fresh, view):]
                at += len(chunk)
            if self.durable:
                os.fsync(fresh)
            self._sync_directory(self.directory)
        except BaseException:
            os.close(fresh)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        self._files[round_id] = fresh
        log.warning("payload log: %s was deleted while the coordinator ran; its %d bytes (the open round's "
                    "accepted updates) are written back from the open file", path, held.st_size)
        return fresh

    def read(self, round_id: int, offset: int, length: int) -> bytes:
        """`length` bytes at `offset` of the round's file; StoreCorrupt if they are not there."""
        if length == 0:
            return b""
        fd, _ = self._open(round_id, create=False)
        size = os.fstat(fd).st_size if fd >= 0 else 0
        # the size first: a length or offset no append gave (a damaged row) reads nothing, allocates nothing
        data = os.pread(fd, length, offset) if offset + length <= size else b""
        if len(data) != length:
            raise StoreCorrupt(f"{self._path(round_id)}: {length} bytes at offset {offset} are not there "
                               f"(got {len(data)}); the payload log does not match the state db")
        return data

    def drop(self, round_id: int) -> None:
        """Delete a closed round's file (call after the transaction that closed it)."""
        fd = self._files.pop(round_id, None)
        if fd is not None:
            os.close(fd)
        self._path(round_id).unlink(missing_ok=True)

    def sweep(self, open_rounds: Callable[[], set[int]]) -> list[int]:
        """Delete the files of rounds that are not open (a crash between a close and its drop);
        the round ids deleted.

        open_rounds is asked *after* the folder is listed: a file exists only once its round is
        open (add_update checks first), so a round missing from the answer was closed, never
        about to open, even while another process writes the store."""
        self._remove_abandoned_builds()
        if not self.directory.exists():
            return []
        listed = [int(m.group(1)) for m in map(_ROUND_FILE.fullmatch, os.listdir(self.directory)) if m]
        still_open = open_rounds()
        dropped = sorted(r for r in listed if r not in still_open)
        for round_id in dropped:
            self.drop(round_id)
        return dropped

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def _path(self, round_id: int) -> Path:
        return self.directory / f"round-{round_id}.log"

    def _open(self, round_id: int, *, create: bool) -> tuple[int, bool]:
        """(descriptor, whether this call created the file); (-1, False) if absent and not create."""
        if round_id in self._files:
            return self._files[round_id], False
        path = self._path(round_id)
        created = False
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except FileNotFoundError:
            if not create:
                return -1, False
            fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            created = True
        self._files[round_id] = fd
        return fd, created

    def _remove_abandoned_builds(self) -> None:
        """Delete the half-made folders (`_make_directory`) of processes that died before their
        rename: named `.<folder>.tmp-<pid>` for a pid that no longer runs, and holding nothing
        but fedge's marker. Anything else by that name is left alone (not ours to delete)."""
        pattern = re.compile(re.escape(f".{self.directory.name}.tmp-") + r"([0-9]+)")
        try:
            entries = os.listdir(self.directory.parent)
        except OSError:  # no folder to look in (or not ours to list): nothing to tidy
            return
        for entry in entries:
            match = pattern.fullmatch(entry)
            if match is None or int(match.group(1)) == os.getpid() or pid_running(int(match.group(1))):
                continue
            building = self.directory.parent / entry
            try:
                if not building.is_dir() or not set(os.listdir(building)) <= {MARKER}:
                    continue
                (building / MARKER).unlink(missing_ok=True)
                building.rmdir()
            except OSError:  # gone meanwhile, or not ours to change: leave it
                continue

    def _make_directory(self) -> None:
        """The folder with its marker in one rename: a crash never leaves it without the marker
        (which the next start would refuse as not fedge's)."""
        building = self.directory.with_name(f".{self.directory.name}.tmp-{os.getpid()}")
        building.mkdir(exist_ok=True)
        marker = os.open(building / MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(marker, b"update payloads of open rounds; see coordinator/payload_log.py\n")
            if self.durable:
                os.fsync(marker)
        finally:
            os.close(marker)
        self._sync_directory(building)
        os.rename(building, self.directory)

    def _sync_directory(self, directory: Path) -> None:
        """fsync a folder, so a file (or folder) made in it survives a power cut."""
        if not self.durable:
            return
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
