"""Updates waiting for the coordinator's acknowledgement, kept on disk.

The broker is not a durable store (a broker killed with -9 loses QoS 1 messages it already
acknowledged), so the device keeps every encoded Update until the coordinator's Ack for its
update id arrives, across restarts of the device too. One file per update:
`r<round>-<update_id>.msg`, written atomically; its mtime is the injected clock's wall time
when it was kept, so the age of an update is measured on the same clock that asks for it.
An update kept by this run is aged on the clock's monotonic time instead: a wall clock that
jumps (a board without a real-time clock booting at its last saved time, then set by NTP) made
an update kept a minute ago look weeks old, and it was dropped unsent at the next resend.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .kernel.clock import SystemClock
from .kernel.errors import DeviceStateError
from .kernel.files import atomic_write_bytes, read_capped, set_aside

log = logging.getLogger("fedge.pending")
_NAME = re.compile(r"^r(\d+)-([0-9A-Za-z_-]+)\.msg$")


@dataclass(frozen=True)
class PendingUpload:
    round_id: int
    update_id: str
    payload: bytes  # the encoded Update message, exactly as first sent


class PendingUploads:
    def __init__(self, directory: str | Path, clock=None, max_bytes: int = 64 << 20):
        """max_bytes: a kept file larger than this is no update this device could send (journal.keep
        refuses those), so it is set aside unread, as one that cannot be read at all is."""
        self.dir = Path(directory)
        self.clock = clock or SystemClock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file by its name (not fedge's to delete): FileExistsError stopped the start
            raise DeviceStateError(f"{self.dir} is not a folder; the device keeps its unacknowledged updates "
                                   "there: move it aside") from None
        self._items: dict[str, PendingUpload] = {}
        self._kept_at: dict[str, float] = {}  # update id -> clock.now() when this run kept it
        for path in sorted(self.dir.iterdir()):
            match = _NAME.match(path.name)
            if match:
                try:
                    payload = read_capped(path, max_bytes)  # a folder or FIFO by that name, a bad sector: OSError
                except OSError as exc:  # it stopped every start of the device
                    log.error("set aside kept update %s: cannot be read (%s): %s", path.name, exc,
                              set_aside(path))
                    continue
                self._items[match.group(2)] = PendingUpload(int(match.group(1)), match.group(2), payload)

    def add(self, round_id: int, update_id: str, payload: bytes) -> None:
        if not re.fullmatch(r"[0-9A-Za-z_-]+", update_id):
            raise ValueError(f"update id {update_id!r} is not a safe file name")
        path = self._path(round_id, update_id)
        atomic_write_bytes(path, payload)
        written = self.clock.wall()
        os.utime(path, (written, written))
        self._items[update_id] = PendingUpload(round_id, update_id, payload)
        self._kept_at[update_id] = self.clock.now()

    def remove(self, update_id: str) -> bool:
        item = self._items.pop(update_id, None)
        self._kept_at.pop(update_id, None)
        if item is None:
            return False
        self._path(item.round_id, update_id).unlink(missing_ok=True)
        return True

    def set_aside(self, update_id: str) -> Path | None:
        """Forget a kept update that cannot be sent (its frame no longer decodes) and rename its
        file to `.damaged` (kernel.files.set_aside): the new path, or None if none was kept."""
        item = self._items.pop(update_id, None)
        self._kept_at.pop(update_id, None)
        path = None if item is None else self._path(item.round_id, update_id)
        return set_aside(path) if path is not None and os.path.lexists(path) else None

    def _path(self, round_id: int, update_id: str) -> Path:
        return self.dir / f"r{round_id}-{update_id}.msg"

    def __contains__(self, update_id: str) -> bool:
        return update_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, update_id: str) -> PendingUpload | None:
        return self._items.get(update_id)

    def items(self) -> list[PendingUpload]:
        return list(self._items.values())

    def older_than(self, seconds: float) -> list[PendingUpload]:
        """Uploads kept more than `seconds` ago, oldest first: by the clock's monotonic time if
        this run kept them, else by its wall time (the file's mtime, all a restart has)."""
        now, wall = self.clock.now(), self.clock.wall()
        old = []
        for item in self._items.values():
            if item.update_id in self._kept_at:
                age = now - self._kept_at[item.update_id]
            else:
                try:
                    age = wall - self._path(item.round_id, item.update_id).stat().st_mtime
                except OSError:
                    continue
            if age > seconds:
                old.append((age, item))
        return [item for _, item in sorted(old, key=lambda pair: -pair[0])]
