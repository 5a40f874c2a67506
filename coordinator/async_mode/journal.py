"""What async mode must not lose: tasks in flight and the open buffer's accepted updates.

The buffer itself is a round in the coordinator's Store (store.py): opened with
`open_round` (its model version) before any update enters it, closed by `commit_round`,
which commits the new model version, its record and its privacy charge in one
transaction. This journal keeps, next to it (same SQLite file, own tables):

    async_tasks    task_id PK, device_id, round_id, base_version, deadline_wall
                   written before the TrainTask leaves; deleted when answered or expired
    async_updates  (device_id, round_id, update_id) PK, digest, buffer_id, seq, staleness,
                   num_examples, payload, control, reported_norm
                   written (and the task deleted, one transaction) before the Ack leaves

An update belongs to the buffer `buffer_id` it entered. Which updates a committed model
holds is therefore decided by the Store's round status alone: rows of a committed buffer
are counted, rows of the open one are replayed on restart. A `kill -9`:

* before a task's row: no device holds it. After: a restart resends it until its deadline.
* before an update's row: no Ack left; the device re-publishes and it is accepted anew.
  After: the restart replays it into the buffer (same seq order, same stored staleness, so
  the aggregate is bit-identical) and a re-publish is acked as a duplicate.
* before commit_round: the buffer is still open with all its rows: replayed, flushed again.
  After: the rows belong to a committed buffer and are never replayed; their keys still
  answer re-publishes as duplicates. Nothing is counted twice or lost.

Payloads of closed buffers are dropped lazily (`forget`); keys are kept for
`keep_buffers` buffers.

Every write transaction first checks that the state_db path still names the file this
connection opened (state_file.StateFileGuard): deleted or replaced, the write stops with
StoreGone and a rescued copy, as the store's own writes do; it went on into the unlinked file.

Every row read back is checked (`checked_row`): a value this code never writes (a NULL
payload, a negative staleness, text where a number goes) stops the start with StoreCorrupt,
naming the file, table and column.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from .. import row_check
from ..group_commit import GroupCommit
from ..row_check import BYTES, BYTES_OR_NULL, COUNT, FINITE, ID, NORM_OR_NULL, POSITIVE, TEXT
from ..sqlite_tx import immediate_transaction
from ..state_file import StateFileGuard

_SCHEMA = """
CREATE TABLE IF NOT EXISTS async_tasks (
    task_id TEXT PRIMARY KEY, device_id TEXT NOT NULL, round_id INTEGER NOT NULL,
    base_version INTEGER NOT NULL, deadline_wall REAL NOT NULL);
CREATE TABLE IF NOT EXISTS async_updates (
    device_id TEXT NOT NULL, round_id INTEGER NOT NULL, update_id TEXT NOT NULL, digest TEXT NOT NULL,
    buffer_id INTEGER NOT NULL, seq INTEGER NOT NULL, staleness INTEGER NOT NULL, num_examples INTEGER NOT NULL,
    payload BLOB, control BLOB, reported_norm REAL, PRIMARY KEY (device_id, round_id, update_id));
CREATE INDEX IF NOT EXISTS async_updates_by_buffer ON async_updates (buffer_id, seq)
"""


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    device_id: str
    round_id: int
    base_version: int
    deadline_wall: float  # seconds since the epoch

    def left(self, wall: float, longest: float) -> float:
        """Seconds the task has left at wall time `wall`, at most `longest` (round_deadline_s: what
        it had when it left). A wall clock stepped back while the coordinator was down (a board with
        no real-time clock, restarted before NTP) once added the whole step to every task, and a
        task on an older version, never resent, held its concurrency slot that long."""
        return min(self.deadline_wall - wall, longest)


@dataclass(frozen=True)
class BufferedRow:
    device_id: str
    round_id: int  # the Update's (its task's) round id: part of the dedupe key
    update_id: str
    digest: str
    buffer_id: int
    seq: int  # acceptance order within the buffer
    staleness: int
    num_examples: int
    payload: bytes
    control: bytes = b""
    reported_norm: float | None = None


class SqliteJournal:
    def __init__(self, path: str | Path, *, durable: bool = True, keep_buffers: int = 100):
        self.path = Path(path).absolute()  # as the store's (store.py): a later chdir must not move it
        self.keep_buffers = keep_buffers
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._guard = StateFileGuard(self._db, self.path)  # the store's check, on this connection too
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):
                db.execute(statement)
        self._guard.pin()

    def _tx(self):
        return immediate_transaction(self._db, guard=self._guard)

    def close(self) -> None:
        self._db.close()

    def add_task(self, task: TaskRow) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO async_tasks VALUES (?, ?, ?, ?, ?)",
                       (task.task_id, task.device_id, task.round_id, task.base_version, task.deadline_wall))

    def drop_task(self, task_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM async_tasks WHERE task_id = ?", (task_id,))

    def tasks(self) -> list[TaskRow]:
        """StoreCorrupt for a row whose values this code never writes (checked_row)."""
        return [TaskRow(*checked_row(self.path, "async_tasks", _TASK_COLUMNS, row)) for row in self._db.execute(
            "SELECT task_id, device_id, round_id, base_version, deadline_wall FROM async_tasks ORDER BY rowid")]

    def add_update(self, row: BufferedRow, task_id: str) -> None:
        """Durably buffer an accepted update and retire its task; call before the Ack."""
        with self._tx() as db:
            db.execute("INSERT INTO async_updates VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (row.device_id, row.round_id, row.update_id, row.digest, row.buffer_id, row.seq, row.staleness,
                        row.num_examples, row.payload, row.control or None, row.reported_norm))
            db.execute("DELETE FROM async_tasks WHERE task_id = ?", (task_id,))

    def buffered(self, buffer_id: int) -> list[BufferedRow]:
        """The buffer's rows in acceptance order; StoreCorrupt for one this code never writes."""
        rows = self._db.execute("SELECT * FROM async_updates WHERE buffer_id = ? ORDER BY seq", (buffer_id,))
        out = []
        for row in rows:
            row = checked_row(self.path, "async_updates", _UPDATE_COLUMNS, row)
            out.append(BufferedRow(*row[:8], bytes(row[8]), bytes(row[9] or b""), row[10]))
        return out

    def counted_digest(self, device_id: str, round_id: int, update_id: str) -> str | None:
        row = self._db.execute("SELECT digest FROM async_updates WHERE device_id = ? AND round_id = ? AND "
                               "update_id = ?", (device_id, round_id, update_id)).fetchone()
        return row[0] if row else None

    def forget(self, closed_buffer: int) -> None:
        """Drop payloads of buffers up to `closed_buffer` (committed or abandoned) and old keys."""
        with self._tx() as db:
            db.execute("UPDATE async_updates SET payload = NULL, control = NULL WHERE buffer_id <= ?", (closed_buffer,))
            db.execute("DELETE FROM async_updates WHERE buffer_id <= ?", (closed_buffer - self.keep_buffers,))


# (column, what this code writes there): a row read back must still hold it, else StoreCorrupt.
_TASK_COLUMNS = (("task_id", TEXT), ("device_id", TEXT), ("round_id", ID), ("base_version", COUNT),
                 ("deadline_wall", FINITE))
_UPDATE_COLUMNS = (("device_id", TEXT), ("round_id", ID), ("update_id", TEXT), ("digest", TEXT),
                   ("buffer_id", ID), ("seq", COUNT), ("staleness", COUNT), ("num_examples", POSITIVE),
                   ("payload", BYTES), ("control", BYTES_OR_NULL), ("reported_norm", NORM_OR_NULL))


def checked_row(path: Path, table: str, columns: tuple[tuple[str, str], ...], row: tuple) -> tuple:
    """row_check.checked_row, naming the async journal."""
    return row_check.checked_row(path, table, columns, row, what="the async journal")


class MemoryJournal:
    """The same contract in memory: the simulator's, and a coordinator without state_db."""

    path = ":memory:"

    def __init__(self, keep_buffers: int = 8):
        self.keep_buffers = keep_buffers
        self._tasks: dict[str, TaskRow] = {}
        self._updates: dict[tuple[str, int, str], BufferedRow] = {}

    def add_task(self, task: TaskRow) -> None:
        if task.task_id in self._tasks:
            raise ValueError(f"task {task.task_id} exists")
        self._tasks[task.task_id] = task

    def drop_task(self, task_id: str) -> None:
        self._tasks.pop(task_id, None)

    def tasks(self) -> list[TaskRow]:
        return list(self._tasks.values())

    def add_update(self, row: BufferedRow, task_id: str) -> None:
        key = (row.device_id, row.round_id, row.update_id)
        if key in self._updates:
            raise ValueError(f"update {key} exists")
        self._updates[key] = row
        self._tasks.pop(task_id, None)

    def buffered(self, buffer_id: int) -> list[BufferedRow]:
        return sorted((r for r in self._updates.values() if r.buffer_id == buffer_id), key=lambda r: r.seq)

    def counted_digest(self, device_id: str, round_id: int, update_id: str) -> str | None:
        row = self._updates.get((device_id, round_id, update_id))
        return row.digest if row else None

    def forget(self, closed_buffer: int) -> None:
        self._updates = {k: r for k, r in self._updates.items() if r.buffer_id > closed_buffer - self.keep_buffers}


def open_journal(store) -> SqliteJournal | MemoryJournal:
    """The journal beside a Store: in its SQLite file, or held by a MemoryStore (so a
    coordinator rebuilt on the same MemoryStore finds it, as a restart finds the file)."""
    if isinstance(store.path, Path):
        return SqliteJournal(store.path)
    holder = store.store if isinstance(store, GroupCommit) else store  # the store's, not its burst wrapper's
    journal = getattr(holder, "async_journal", None)
    if journal is None:
        journal = holder.async_journal = MemoryJournal()
    return journal
