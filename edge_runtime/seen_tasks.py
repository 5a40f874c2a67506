"""The tasks a device has received, kept on disk across restarts.

A task redelivered after a restart (QoS 1, or the coordinator resending) is answered again,
never trained twice; and a task a previous run received but never answered (it was killed
while training, or while waiting for its model) is declined as `interrupted` at the next
start, so its round need not wait for the deadline. One JSON file of
[task_id, round_id, answered] rows, the newest last, written atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .kernel.files import TooLarge, atomic_write_bytes, read_capped

log = logging.getLogger("fedge.journal")
_ROW_BYTES = 4096  # a row is at most about 1.6 KB: a 256-character task id, each character escaped as \uXXXX


class SeenTasks:
    def __init__(self, path: str | Path, kept: int = 256):
        self.path = Path(path)
        self.kept = kept  # the newest this many are remembered
        self._rows: dict[str, list] = self._load()  # task_id -> [round_id, answered]

    def __contains__(self, task_id: str) -> bool:
        return task_id in self._rows

    def add(self, task_id: str, round_id: int) -> None:
        """Received, not yet answered."""
        self._rows[task_id] = [round_id, False]
        while len(self._rows) > self.kept:
            self._rows.pop(next(iter(self._rows)))
        self._save()

    def answered(self, task_id: str, round_id: int | None = None) -> None:
        """Answered; with round_id, also a task this file lost (see _save) is remembered again."""
        row = self._rows.get(task_id)
        if row is None and round_id is not None:
            self._rows[task_id] = row = [round_id, False]
            while len(self._rows) > self.kept:
                self._rows.pop(next(iter(self._rows)))
        if row is not None and not row[1]:
            row[1] = True
            self._save()

    def unanswered(self) -> list[tuple[str, int]]:
        """(task_id, round_id) of the tasks received and never answered, oldest first."""
        return [(task_id, round_id) for task_id, (round_id, answered) in self._rows.items()
                if not answered and round_id is not None]

    def _load(self) -> dict[str, list]:
        """An older file lists task ids only: those count as answered."""
        try:  # not a regular file (a FIFO blocked the start) or too big: not one fedge wrote
            rows = json.loads(read_capped(self.path, self.kept * _ROW_BYTES))
        except TooLarge:
            log.warning("%s ignored: more bytes than %d rows could take", self.path, self.kept)
            return {}
        except (OSError, ValueError, RecursionError):  # RecursionError: `[[[[...` nested a few thousand deep
            return {}
        # Rows of a shape fedge never writes ({"a": 1}, a string round id) are skipped: they once
        # stopped the start with a KeyError, or a TypeError in a log line later.
        entries = [e for e in map(_entry, rows if isinstance(rows, list) else []) if e is not None]
        return {task_id: [round_id, answered] for task_id, round_id, answered in entries[-self.kept:]}

    def _save(self) -> None:
        rows = [[task_id, round_id, answered] for task_id, (round_id, answered) in self._rows.items()]
        # Not fsync'd (durable=False): a killed process keeps it (the kernel has it), and what a
        # power cut may lose is harmless. A lost "received" leaves no update to double count:
        # an unanswered task is then not declined as `interrupted` (its round waits for the
        # deadline, or the task comes again and trains), and an answered one is still known by
        # its kept update (DeviceJournal.__contains__). A lost "answered" after the Ack makes
        # the restart decline as `interrupted` a task the coordinator already counted, which it
        # ignores (rounds.py: a Decline from a device that replied changes nothing).
        # The same reasons make a write that fails (a full disk, a read-only folder) harmless: the
        # rows stay in memory for this run. Raised, it stopped every task on arrival, unanswered.
        try:
            atomic_write_bytes(self.path, json.dumps(rows).encode(), durable=False)
        except OSError as exc:
            log.warning("%s not written (%s); the tasks received are remembered until the device stops",
                        self.path, exc)


def _entry(row) -> list | None:
    """[task id, round id or None, answered] from a saved row, or None for a shape fedge does not write."""
    if isinstance(row, str):  # an older file: task ids only, counted as answered
        return [row, None, True]
    if isinstance(row, list) and len(row) == 3 and isinstance(row[0], str) and isinstance(row[2], bool) and (
            row[1] is None or isinstance(row[1], int) and not isinstance(row[1], bool)):
        return list(row)
    return None
