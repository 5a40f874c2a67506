"""Durable coordinator state in one SQLite file (WAL): model, strategy state, rounds, updates.

Schema (version 4)::

    meta      key TEXT PK, value TEXT              schema, model_id, strategy, last_seen_refresh_since
    models    version INT PK, round_id, created_wall, extra_groups (JSON list)
    tensors   (version, kind, grp, name) PK, dtype, shape (JSON), data BLOB
              kind 'params' (grp '') or 'extra' (grp = ServerState.extra key); raw array
              bytes with their dtype string, so a load is bit-exact
    rounds    round_id INT PK, status open|committed|abandoned, model_version, selected,
              tasks (JSON), target, quorum, started_wall, deadline_wall, closed_wall,
              record (JSON RoundRecord), privacy (JSON dp RoundPlan, NULL without DP); at
              most one row is open (partial index)
    privacy_ledger  round_id INT PK, charge (JSON RoundPlan): rounds whose noised aggregate
              was computed (and every Poisson-sampled round), written by the transaction that
              closes the round; a secure round's at its first unmask answer (charge_round)
    updates   (device_id, round_id, update_id) PK, digest, seq, num_examples, reported_norm (DP),
              log_offset, payload_len, control_len: where the Update's compressed payload and
              control-variate delta (SCAFFOLD; length 0 for none) are in the round's payload
              log (payload_log.py) while the round is open; payload BLOB, control BLOB: the
              bytes themselves in rows written before version 4 (log_offset NULL)
    declines  (round_id, device_id) PK, seq, reason       rows of the open round only
    evaluations  seq INT PK, round_id (the committed round whose model was evaluated), record
              (JSON EvalRecord less its per_device)
    devices   device_id PK, last_seen_wall, eligible, reason, num_examples

Version 2 added updates.control, version 3 rounds.privacy, updates.reported_norm and the
privacy_ledger, version 4 the payload log's columns; an older file is upgraded in place (new
columns NULL: no control, no DP, payloads in their rows).

What is pruned, in the transaction that closes a round: models and tensors past keep_versions,
update keys past keep_key_rounds, and with keep_rounds > 0 the rows and evaluations of closed
rounds older than the latest keep_rounds (sql_store.SqlStore._prune_rounds). Never the open
round, and never the privacy ledger.

The open round's payloads live beside the file, in `<state_db>.payloads/round-<id>.log`
(payload_log.py says why, and adds its step to the crash argument below): back up both.

Every method that writes is one transaction (BEGIN IMMEDIATE ... COMMIT), so a crash
leaves each step either wholly done or not done at all. Walking the coordinator's steps
with a `kill -9` between any two of them:

* begin_round: the round row is committed *before* any TrainTask is published. Killed
  before the commit: no device holds a task of it, and the round id is not used yet.
  Killed after: the restart finds the round open with the same task ids and re-sends the
  tasks to devices that have not answered (devices ignore task ids they already have).
* an accepted update: its payload is appended to the round's payload log and fsynced, then
  its row (key, digest, where the payload is) is committed, both *before* the Ack is
  published. Killed before: no Ack left, the device keeps the update and re-publishes it,
  and it is accepted as new. Killed after: the restart replays it into the aggregator,
  and the device's re-publish finds the key, so it is acked as a duplicate, not re-added.
* a decline: one row; killed before it, the device just counts as silent until the deadline.
* commit: the new model version with its params and strategy state, the round's record,
  the deletion of its payloads and declines, and pruning are one transaction. Killed
  before it: the round is still open with all its updates stored; the restart replays
  them in acceptance order (`seq`), so the aggregator and the committed params come out
  bit-identical. Killed after: the new version is loaded and the next round id follows it;
  a late re-publish of an update of that round is found by its kept key and acked as a
  duplicate. Nothing is ever half-committed, and a round cannot commit twice
  (commit_round refuses a round that is not open, and a version that does not follow).
* abandon: status, record and payload deletion in one transaction; the next round takes
  the next id, and nothing of the abandoned one was applied.
* privacy: a DP round's plan (z, S, sampling event) is in its open row, so a restart replays
  the same noise; its charge enters privacy_ledger in the transaction that closes it (also
  when abandoned after its noised aggregate was computed, or Poisson-sampled). Killed before:
  still open, replayed. A secure round cannot be replayed (its keys die with the process) and is
  abandoned at the restart, so its charge is written earlier, in its own transaction
  (charge_round) as its first unmask answer is accepted, before the sum can be computed: killed
  after that write, the ledger holds it once; killed before, the one answer held died with the
  process, and nothing of the sum was revealed.

`durable=True` (synchronous=FULL) also makes each commit survive a power cut, which is what
an Ack promises; NORMAL survives a killed process but may lose the last commits on power loss.
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from fedge.edge_runtime.kernel.errors import ConfigError

from . import store_rows
from .errors import StoreCorrupt
from .payload_log import PayloadLog
from .sql_store import SqlStore, check_keeps
from .sqlite_tx import immediate_transaction
from .state_file import StateFileGuard, damaged, refuse_lost_state
from .stored import StoredDecline, StoredDevice, StoredRound, StoredUpdate
from .strategies import ServerState

__all__ = ["RoundStore", "Store", "StoredDecline", "StoredDevice", "StoredRound", "StoredUpdate", "open_store"]

SCHEMA_VERSION = 4

log = logging.getLogger("fedge.coordinator.store")

_BUSY_MS = 5000  # how long a write waits for another connection's lock
# How long the checkpoint after a keyed round's close waits for readers (_scrub): it runs on the
# coordinator's loop, and with _BUSY_MS a reader in a read transaction held every DP close 5 s.
_SCRUB_WAIT_MS = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    version INTEGER PRIMARY KEY, round_id INTEGER, created_wall REAL NOT NULL, extra_groups TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tensors (
    version INTEGER NOT NULL, kind TEXT NOT NULL, grp TEXT NOT NULL, name TEXT NOT NULL,
    dtype TEXT NOT NULL, shape TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (version, kind, grp, name));
CREATE TABLE IF NOT EXISTS rounds (
    round_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('open', 'committed', 'abandoned')),
    model_version INTEGER NOT NULL, selected TEXT NOT NULL, tasks TEXT NOT NULL,
    target INTEGER NOT NULL, quorum INTEGER NOT NULL,
    started_wall REAL NOT NULL, deadline_wall REAL NOT NULL, closed_wall REAL, record TEXT, privacy TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS one_open_round ON rounds (status) WHERE status = 'open';
CREATE TABLE IF NOT EXISTS updates (
    device_id TEXT NOT NULL, round_id INTEGER NOT NULL, update_id TEXT NOT NULL,
    digest TEXT NOT NULL, seq INTEGER NOT NULL, num_examples INTEGER NOT NULL, payload BLOB, control BLOB,
    reported_norm REAL, log_offset INTEGER, payload_len INTEGER, control_len INTEGER,
    PRIMARY KEY (device_id, round_id, update_id));
CREATE INDEX IF NOT EXISTS updates_by_round ON updates (round_id, seq);
CREATE TABLE IF NOT EXISTS declines (
    round_id INTEGER NOT NULL, device_id TEXT NOT NULL, seq INTEGER NOT NULL, reason TEXT NOT NULL,
    PRIMARY KEY (round_id, device_id));
CREATE TABLE IF NOT EXISTS evaluations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, round_id INTEGER NOT NULL, record TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS privacy_ledger (round_id INTEGER PRIMARY KEY, charge TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, last_seen_wall REAL NOT NULL, eligible INTEGER NOT NULL,
    reason TEXT NOT NULL, num_examples INTEGER NOT NULL);
"""


class Store(Protocol):
    """Where the coordinator keeps what must outlive it. Three implementations: RoundStore
    (SQLite, this module), PostgresStore (pg_store.py; the same SQL, sql_store.py) and
    MemoryStore (memory_store.py: the simulator's, and any coordinator without a database).

    The contract, which the coordinator relies on and the crash argument above spells out:
    every write method is atomic (all or nothing); `open_round` comes before any task of the
    round leaves, `add_update` (of one or more updates) before their Acks, `commit_round` is
    the commit point; the open round's accepted updates (payloads included) and declines are
    kept until it closes, so `load_open_round` can replay them in acceptance order (`seq`);
    a round closes once; `counted_digest` recognises updates counted in recent closed rounds.
    A record is a RoundRecord (commit_round, abandon_round) or an EvalRecord less its per_device
    (add_evaluation) as a dict: what a SQL store reads back is checked to be one (record_rows.py).
    """

    path: object  # where it lives, for messages

    def bind(self, model_id: str, strategy: str) -> None: ...
    def load_state(self) -> ServerState | None: ...
    def save_initial_state(self, state: ServerState) -> None: ...
    def next_round_id(self) -> int: ...
    def open_round(self, rnd: StoredRound) -> None: ...
    def load_open_round(self) -> StoredRound | None: ...
    def add_update(self, round_id: int, *updates: StoredUpdate) -> None: ...
    def add_decline(self, round_id: int, decline: StoredDecline) -> None: ...
    def counted_digest(self, device_id: str, round_id: int, update_id: str) -> str | None: ...
    def commit_round(self, round_id: int, state: ServerState, record: dict, closed_wall: float,
                     charge: dict | None = None) -> None: ...
    def abandon_round(self, round_id: int, record: dict, closed_wall: float, charge: dict | None = None) -> None: ...
    def charge_round(self, round_id: int, charge: dict) -> None: ...
    def privacy_ledger(self) -> list[dict]: ...
    def write_deadline(self, seconds: float) -> AbstractContextManager: ...  # bound the writes within
    def round_records(self) -> list[dict]: ...
    def save_device(self, device: StoredDevice) -> None: ...
    def save_devices(self, devices: list[StoredDevice]) -> None: ...  # in one transaction
    def refresh_began(self, wall: float) -> float: ...  # set once, read back (sql_store.py)
    def add_evaluation(self, round_id: int, record: dict) -> None: ...
    def evaluation_records(self) -> list[dict]: ...
    def load_devices(self) -> list[StoredDevice]: ...


def open_store(config, epoch: int | None = None) -> Store | None:
    """The store a CoordinatorConfig asks for (state_db or state_dsn, keep_versions, keep_rounds); None
    when neither is set. epoch: the leader epoch a PostgresStore fences its writes with (leadership.py)."""
    keep = {"keep_versions": config.keep_versions, "keep_rounds": config.keep_rounds}
    if config.state_dsn:
        from .pg_store import PostgresStore  # psycopg is optional: imported only when asked for

        return PostgresStore(config.state_dsn, epoch=epoch, **keep)
    return RoundStore(config.state_db, **keep) if config.state_db else None


def holds_fedge_schema(db: sqlite3.Connection) -> bool:
    """Whether an open SQLite database is fedge's state: a meta table with its schema row, or no
    tables at all (a state file whose coordinator has not set it up yet)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone():
        return db.execute("SELECT 1 FROM meta WHERE key = 'schema'").fetchone() is not None
    return db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0


def _refuse_foreign_db(path: Path) -> None:
    """state_db names a file fedge made, or a new (or empty) one: fedge's schema and WAL mode
    must never land in someone else's database. Fedge's has a meta table with its schema row;
    a database with no tables at all is taken too (a coordinator killed between setting WAL
    mode and creating its tables leaves one, and must start again on it). The check only
    reads (SQLite itself may replay a WAL or roll back a hot journal on open, as any reader
    does), and a file that is no database raises before anything is written."""
    if not path.exists() or path.is_file() and path.stat().st_size == 0:
        return
    ours = False
    if path.is_file():
        try:
            db = sqlite3.connect(str(path))
            try:
                ours = holds_fedge_schema(db)
            finally:
                db.close()
        except sqlite3.DatabaseError as exc:
            if (corrupt := damaged(path, exc)) is not None:  # SQLite's file, fedge's or not: damaged, not foreign
                raise corrupt from exc
            ours = False
    if not ours:
        raise ConfigError(f"state_db {path}: exists and is not a fedge state database (no fedge schema row can be "
                          f"read from it: another program's file, or fedge's damaged past reading); fedge never "
                          f"writes into a file it did not create: point state_db at a new path, or restore it")


class RoundStore(SqlStore):
    def __init__(self, path: str | Path, *, durable: bool = True, keep_versions: int = 3, keep_key_rounds: int = 100,
                 keep_rounds: int = 0):
        """keep_versions: committed model versions kept; keep_key_rounds: rounds whose update
        keys are kept to recognise late re-publishes as duplicates; keep_rounds: closed rounds
        whose rows and evaluation records are kept (0: all; SqlStore._prune_rounds)."""
        check_keeps(keep_versions, keep_key_rounds, keep_rounds)
        # Absolute once, here: a relative path read after the process changed folder named no file
        # (StoreGone for a healthy store) and put the payload log and a rescue in the wrong folder.
        # absolute(), not resolve(): a symlinked state_db keeps its payload log beside the link.
        self.path = Path(path).absolute()
        self.keep_versions = keep_versions
        self.keep_key_rounds = keep_key_rounds
        self.keep_rounds = keep_rounds
        _refuse_foreign_db(self.path)  # before the payload log's folder, and before any write
        refuse_lost_state(self.path, Path(f"{self.path}.payloads"))  # before a fresh file and the sweep
        # The open round's payloads (payload_log.py); made first: it refuses a folder fedge did not make.
        self._payloads = PayloadLog(Path(f"{self.path}.payloads"), durable=durable)
        # isolation_level=None: no implicit transactions; each write method opens its own.
        # check_same_thread=False: the loop may run on another thread than the one that built
        # the store; it is still used by one thread at a time.
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        # pinned once the first transaction made the file; a rescue takes the open round's payloads along
        self._guard = StateFileGuard(self._db, self.path, inline=self._inline_open_payloads)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self._db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        # A closed round's noise key is overwritten, not just unlinked from its page (_scrub)
        self._db.execute("PRAGMA secure_delete=ON")
        with self._tx() as db:
            for statement in _SCHEMA.split(";"):  # not executescript: it would commit mid-transaction
                if statement.strip():
                    db.execute(statement)
            row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            if row is None:
                db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] in ("1", "2", "3"):  # add the columns a newer schema has (the CREATEs made its tables)
                for table, column, kind in (("updates", "control", "BLOB"), ("rounds", "privacy", "TEXT"),
                                            ("updates", "reported_norm", "REAL"), ("updates", "log_offset", "INTEGER"),
                                            ("updates", "payload_len", "INTEGER"),
                                            ("updates", "control_len", "INTEGER")):
                    if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
                        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise ConfigError(f"{self.path}: state db schema {row[0]}, this build reads {SCHEMA_VERSION}")
            forgot = self._forget_closed_keys(db)  # an earlier build's, of rounds closed then
        self._guard.pin()  # every later write first checks it is still this file (StoreGone if not)
        self._payloads.sweep(lambda: {r for (r,) in self._db.execute(
            "SELECT round_id FROM rounds WHERE status = 'open'")})
        if forgot:
            self._scrub(f"{forgot} rows of closed rounds had their noise keys (an earlier build's) forgotten")

    def close(self) -> None:
        self._payloads.close()
        self._db.close()

    def _tx(self):
        return immediate_transaction(self._db, guard=self._guard)

    # The open round's payloads go to its payload log (payload_log.py), the rows say where.

    def add_update(self, round_id: int, *updates: StoredUpdate) -> None:
        """Durably record accepted updates: their bytes appended to the round's payload log
        (one fsync), then their rows in one transaction; both before their Acks."""
        self._require_open(self._db, round_id)  # before the append: no file for a round that is not open
        blobs = [blob for update in updates for blob in (update.payload, update.control)]
        try:
            offsets = self._payloads.append(round_id, blobs)
        except Exception:
            # `rm -rf` of state_db's folder fails the append first (ENOENT: no folder to make the
            # log's in): that is the state_db gone (StoreGone, exit 2), not a failed write (exit 1,
            # whose restart began afresh at version 0), so the file's check comes first.
            self._guard()
            raise
        with self._tx() as db:
            self._require_open(db, round_id)
            for update, offset in zip(updates, offsets[::2]):
                db.execute("INSERT INTO updates (device_id, round_id, update_id, digest, seq, num_examples, "
                           "reported_norm, log_offset, payload_len, control_len) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (update.device_id, round_id, update.update_id, update.digest, update.seq,
                            update.num_examples, update.reported_norm, offset, len(update.payload),
                            len(update.control)))

    def _inline_open_payloads(self, copy: sqlite3.Connection) -> str:
        """A rescue's copy (state_file._rescue) made whole: the open round's payloads, read from the
        log descriptors this process still holds (their files may be gone with the folder), put into
        the copy's rows as an older row keeps them (log columns NULL: store_rows.log_place)."""
        # the open round's rows only: a closed round's keep their log columns (its payloads are gone
        # by design; the rows stay for dedupe) and are never read for bytes again
        rows = copy.execute("SELECT round_id, update_id, log_offset, payload_len, control_len FROM updates "
                            "WHERE log_offset IS NOT NULL AND round_id IN "
                            "(SELECT round_id FROM rounds WHERE status = 'open')").fetchall()
        lost = 0
        for round_id, update_id, *place in rows:
            try:
                payload, control = self._logged(round_id, place)
            except (OSError, StoreCorrupt):
                # out of the copy: kept, its row pointing at bytes no log holds stopped the restart
                # (StoreCorrupt); without it the round resumes without that update (its device had its
                # Ack and does not resend it), and the message counts it
                copy.execute("DELETE FROM updates WHERE round_id = ? AND update_id = ?", (round_id, update_id))
                lost += 1
                continue
            copy.execute("UPDATE updates SET payload = ?, control = ?, log_offset = NULL, payload_len = NULL, "
                         "control_len = NULL WHERE round_id = ? AND update_id = ?",
                         (payload, control, round_id, update_id))
        return (f" ({lost} of the open round's {len(rows)} accepted updates could not be read back and are left out "
                "of it)") if lost else ""

    def _open_round_updates(self, round_id: int) -> list[StoredUpdate]:
        """StoreCorrupt for a row fedge never wrote (store_rows.py), or bytes the log does not hold."""
        updates = []
        for row in self._db.execute(
                "SELECT seq, device_id, update_id, digest, num_examples, payload, control, reported_norm, "
                "log_offset, payload_len, control_len FROM updates WHERE round_id = ?", (round_id,)):
            place = store_rows.log_place(self.path, round_id, row[2], row[8:])
            update = store_rows.update(self.path, round_id, row[:8], in_row=place is None)
            if place is not None:  # a version-4 row: the bytes are in the log (StoreCorrupt if not)
                # The store keeps whatever digest it is given (the Store contract tests give
                # made-up ones); the restart checks it against these bytes (admission.replayed).
                payload, control = self._logged(round_id, place)
                update = replace(update, payload=payload, control=control)
            updates.append(update)
        return updates

    def _logged(self, round_id: int, place) -> tuple[bytes, bytes]:
        """An update's payload and control out of the round's log; place: (offset, payload length,
        control length), the two written back to back. StoreCorrupt if the log does not hold them."""
        offset, p_len, c_len = place
        return (self._payloads.read(round_id, offset, p_len), self._payloads.read(round_id, offset + p_len, c_len))

    def _closed(self, round_id: int, forgot: bool) -> None:
        self._payloads.drop(round_id)  # after the commit: killed before this, the next open sweeps it
        if forgot:
            self._scrub(f"round {round_id} closed")

    def _scrub(self, what: str) -> None:
        """The forgotten noise key's bytes out of the files too: the close rewrote the round's row
        (secure_delete zeroes what it freed), but the WAL still holds the pages written while the
        round was open until it is checkpointed and truncated. A reader in the way (busy) leaves
        them until the next DP round closes; said in the log. It waits _SCRUB_WAIT_MS for them, not
        _BUSY_MS: the coordinator's loop stands still while it waits."""
        self._db.execute(f"PRAGMA busy_timeout={_SCRUB_WAIT_MS}")
        try:
            busy, _, _ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        if busy:
            log.warning("%s: %s, but a reader kept the WAL from being truncated: the noise key stays in %s-wal "
                        "until the next DP round closes", self.path, what, self.path)
