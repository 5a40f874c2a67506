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

The connection has pg_link.py's TCP settings: on a cut link a write fails within
tcp_user_timeout (30 s) rather than the kernel's ~15 minutes, and a connection psycopg found
broken is named StoreLinkLost (it never works again: the service stops and its restart
reconnects). write_deadline(s) bounds the writes within it tighter, server and link both: a
stop's drain of the queued refreshes (registry.drain_refreshes) must end within its budget.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

from .leadership import check_epoch
from .pg_link import STORE_TCP_USER_TIMEOUT_MS, LinkedConnection, link_params, named_link_errors, user_timeout
from .pg_schema import connect, migrate, redact
from .sql_store import SqlStore, check_keeps
from .stored import StoredDevice


class _QmarkConnection(LinkedConnection):
    """psycopg's connection taking SqlStore's `?` placeholders (none of its SQL holds a literal ? or %),
    a broken link named StoreLinkLost (pg_link.LinkedConnection)."""

    def execute(self, sql: str, params: tuple = ()):
        return super().execute(sql.replace("?", "%s"), params or None)

    def named_link_errors(self):
        return named_link_errors(self.conn, self.where)


class PostgresStore(SqlStore):
    setting = "state_dsn"
    _insert_order = "ord"

    def __init__(self, dsn: str, *, keep_versions: int = 3, keep_key_rounds: int = 100, keep_rounds: int = 0,
                 epoch: int | None = None, tcp_user_timeout_ms: int = STORE_TCP_USER_TIMEOUT_MS):
        """keep_versions, keep_key_rounds, keep_rounds: as RoundStore's; epoch: the leader epoch to
        fence writes with; tcp_user_timeout_ms: how long data sent and not acknowledged waits on a
        silent link (pg_link.py; a write whose request was acknowledged waits for keepalives)."""
        check_keeps(keep_versions, keep_key_rounds, keep_rounds)
        self.path = redact(dsn)
        self.keep_versions = keep_versions
        self.keep_key_rounds = keep_key_rounds
        self.keep_rounds = keep_rounds
        self.epoch = epoch
        self._deadline_ms: int | None = None  # write_deadline's statement_timeout, while one is on
        link = link_params(dsn, tcp_user_timeout_ms=tcp_user_timeout_ms)  # what the DSN sets itself wins
        conn = connect(dsn, autocommit=True, **link)
        try:
            migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._db = _QmarkConnection(conn, self.path)
        with conn.transaction():  # an earlier build's keys of closed rounds (SqlStore._forget_closed_keys)
            self._forget_closed_keys(self._db)

    def close(self) -> None:
        self._db.conn.close()

    @contextmanager
    def _tx(self):
        with self._db.transaction():  # the commit's failure named too
            if self._deadline_ms is not None:
                self._db.execute(f"SET LOCAL statement_timeout = {self._deadline_ms}")
            if self.epoch is not None:
                check_epoch(self._db, self.epoch, self.path)
            yield self._db

    @contextmanager
    def write_deadline(self, seconds: float):
        """Within: each statement ends after `seconds` on the server (statement_timeout: a lock wait,
        a slow server; QueryCanceled) and on the link (TCP_USER_TIMEOUT: StoreLinkLost)."""
        self._deadline_ms = max(1, int(seconds * 1000))
        try:
            # named: a connection already broken fails here, at its socket (pgconn.socket)
            with self._db.named_link_errors(), user_timeout(self._db.conn, self._deadline_ms):
                yield
        finally:
            self._deadline_ms = None

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
