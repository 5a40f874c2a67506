"""The Store in PostgreSQL (config `state_dsn`): RoundStore's semantics, for coordinators on several machines.

The statements are RoundStore's own (sql_store.SqlStore), so a round commits in one
transaction (model version, strategy state, round record, privacy charge), update keys are
unique and a round closes once, exactly as store.py argues for SQLite. What differs:

* the schema comes from pg_schema.MIGRATIONS, applied when the store opens;
* one connection in autocommit mode, and every write is an explicit transaction. psycopg
  (3) would otherwise open a hidden transaction at the first SELECT, and the write's
  `transaction()` would be a mere savepoint inside it, committed by no one;
* a sharded round's assignment (StoredRound.shards) is written in the round's own opening
  transaction, to shard_assignment (pg_schema migration 3; sharding/tables.py reads it);
* with `epoch` (the PostgresLease this coordinator won), every write transaction first
  checks and locks the leader row (leadership.check_epoch): a deposed leader's writes are
  refused with FencedOut. Without an epoch there is no fencing: one writer is assumed,
  as with a SQLite file.

A commit returns once the server has flushed it (synchronous_commit = on, the default).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import psycopg

from .leadership import check_epoch
from .pg_schema import connect, migrate, redact
from .sql_store import SqlStore, check_keeps
from .stored import StoredDevice


class _QmarkConnection:
    """psycopg's connection taking SqlStore's `?` placeholders (none of its SQL holds a literal ? or %)."""

    def __init__(self, conn: psycopg.Connection):
        self.conn = conn

    def execute(self, sql: str, params: tuple = ()):
        return self.conn.execute(sql.replace("?", "%s"), params or None)


class PostgresStore(SqlStore):
    setting = "state_dsn"
    _insert_order = "ord"

    def __init__(self, dsn: str, *, keep_versions: int = 3, keep_key_rounds: int = 100, keep_rounds: int = 0,
                 epoch: int | None = None):
        """keep_versions, keep_key_rounds, keep_rounds: as RoundStore's; epoch: the leader epoch to
        fence writes with."""
        check_keeps(keep_versions, keep_key_rounds, keep_rounds)
        self.path = redact(dsn)
        self.keep_versions = keep_versions
        self.keep_key_rounds = keep_key_rounds
        self.keep_rounds = keep_rounds
        self.epoch = epoch
        conn = connect(dsn, autocommit=True, connect_timeout=10)
        try:
            migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._db = _QmarkConnection(conn)
        with conn.transaction():  # an earlier build's keys of closed rounds (SqlStore._forget_closed_keys)
            self._forget_closed_keys(self._db)

    def close(self) -> None:
        self._db.conn.close()

    @contextmanager
    def _tx(self):
        with self._db.conn.transaction():
            if self.epoch is not None:
                check_epoch(self._db, self.epoch, self.path)
            yield self._db

    def load_open_round(self):
        """SqlStore's, with a sharded round's stored assignment (StoredRound.shards)."""
        rnd = super().load_open_round()
        if rnd is None:
            return None
        rows = self._db.execute("SELECT device_id, shard FROM shard_assignment WHERE round_id = ?",
                                (rnd.round_id,)).fetchall()
        return replace(rnd, shards=dict(rows)) if rows else rnd

    def save_devices(self, devices: list[StoredDevice]) -> None:
        """SqlStore's rows in one statement (one round trip): its one INSERT a row took 8.5 s for
        50,000 rows (a REFRESH_BATCH_MAX flush, registry.py) on a local server, this 1.2 s (one run
        each, 2 busy cores; a review measured 11.6 s and 1.48 s). An id given twice keeps its last
        row, as SqlStore's loop does (ON CONFLICT may touch a row once per statement)."""
        latest = list({d.device_id: d for d in devices}.values())
        if not latest:
            return
        with self._tx() as db:
            db.execute("INSERT INTO devices (device_id, last_seen_wall, eligible, reason, num_examples) "
                       "SELECT * FROM unnest(?::text[], ?::float8[], ?::int[], ?::text[], ?::bigint[]) "
                       "ON CONFLICT (device_id) DO UPDATE SET last_seen_wall = excluded.last_seen_wall, "
                       "eligible = excluded.eligible, reason = excluded.reason, num_examples = excluded.num_examples",
                       ([d.device_id for d in latest], [float(d.last_seen_wall) for d in latest],
                        [int(d.eligible) for d in latest], [d.reason for d in latest],
                        [int(d.num_examples) for d in latest]))

    def _insert_round(self, db, rnd) -> None:
        super()._insert_round(db, rnd)
        if rnd.shards:
            devices = sorted(rnd.shards)
            db.execute("INSERT INTO shard_assignment (round_id, device_id, shard) "
                       "SELECT ?, * FROM unnest(?::text[], ?::int[])",
                       (rnd.round_id, devices, [rnd.shards[d] for d in devices]))
