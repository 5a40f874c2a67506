"""`fedge coordinator forget-devices` on a config with state_dsn: the rows of that PostgreSQL
database's `devices` table, by forget_devices.py's rules (what it deletes, keeps and refuses,
the cutoff, the too_soon wait and the SCAFFOLD refusal are that module's `plan`, run here on
pg_store's connection). Only the lock, the fedge-state check and the dry run differ.

The lock. Coordinators sharing the database elect a leader by the session advisory lock
leadership.LEADER_LOCK_KEY; only the leader holds the registry in memory and writes its rows.
The command takes that same lock (pg_try_advisory_lock, on its own connection) and keeps it
until it is done:
* a running leader holds it: ServiceUnavailable (exit 1), nothing read or written: stop the
  coordinators first, as with a state_db;
* a standby polling meanwhile fails to get it and polls again; once the command releases it,
  the standby wins, bumps the epoch and restores the registry without the forgotten rows;
* a deposed leader may still run: its lease session died (the lock is free), but a stalled
  process (SIGSTOP, a swap storm, a cut link) can wake and write its in-memory registry back.
  So the one transaction that deletes first bumps `leader.epoch` exactly as a new leader does
  when it wins (leadership.bump_epoch): every later write of that store locks the leader row,
  sees an epoch not its own and is refused with FencedOut (leadership.py). The bump comes
  first: it waits on the row lock of a write in flight, which then commits before it, and
  each later statement (READ COMMITTED, set for the transaction whatever the
  database's default) sees that write, so the rows read are the last ones.
  A lock held longer than LOCK_WAIT_MS (a write stalled mid-transaction) ends the command as
  ServiceUnavailable, nothing forgotten. A link lost during the commit itself is said to leave the
  outcome unknown (run --dry-run to see); the unlock after the commit is best effort.
Sharded ingest (sharding/): the registry is the leader's alone, in this same `devices` table;
the aggregator workers keep none, hold their own shard locks (not this one) and count only
devices of the open round, which the command keeps. They may run meanwhile; the leader not.

fedge state: a database whose schema_version is this build's (len(pg_schema.MIGRATIONS)), else
not_fedge_state (none, or another version: the coordinator migrates it when it starts). The
command never migrates and creates nothing: a DSN naming the wrong database stays untouched.

`--dry-run`: no lock, one REPEATABLE READ READ ONLY transaction (one snapshot for every read)
in a session the server keeps read-only (default_transaction_read_only), so nothing is written.

A role that may read the tables but not delete from them is refused as `read_only` (run it
with the service's DSN). The DSN is shown without its password (pg_schema.redact) in every message and in the output.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager, suppress

from fedge.edge_runtime.kernel.errors import ConfigError, ServiceUnavailable

from .errors import StoreLinkLost
from .forget_devices import (
    DAY_S,
    ForgetRefused,
    ForgetResult,
    Wait,
    Where,
    check_unseen_days,
    log_forgotten,
    not_this_schema,
    plan,
)
from .leadership import LEADER_LOCK_KEY, bump_epoch
from .limits import MAX_FLEET
from .pg_link import first_line, link_params
from .pg_schema import MIGRATIONS, connect, redact
from .pg_store import _QmarkConnection

log = logging.getLogger("fedge.coordinator")
LOCK_WAIT_MS = 30_000  # the longest the bump waits for a coordinator's write in flight (lock_timeout)
READ_ONLY_SESSION = "-c default_transaction_read_only=on"


def forget_devices_pg(dsn: str, unseen_days: float, *, now_wall: float, dry_run: bool = False,
                      max_devices: int = MAX_FLEET) -> ForgetResult:
    """forget_devices' twin for the database at `dsn` (module docstring)."""
    days = check_unseen_days(unseen_days)
    where = Where("state_dsn", redact(dsn))
    try:
        import psycopg  # optional dependency (fedge[postgres]): only a state_dsn needs it
    except ImportError:
        raise ConfigError(f"{where}: PostgreSQL needs psycopg: pip install 'fedge[postgres]'") from None
    wait = Wait(now_wall, days * DAY_S, max_devices)
    options = READ_ONLY_SESSION if dry_run else ""
    conn = connect(dsn, autocommit=True, **link_params(dsn, options=options))
    try:
        db = _QmarkConnection(conn, where.name)  # SqlStore's `?` SQL, a broken link named StoreLinkLost
        result = _preview(db, where, wait) if dry_run else _forget(db, where, wait, now_wall)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ForgetRefused("read_only", f"{where}: this role may not do it ({first_line(exc)}); run the command "
                            "with the service's role (its state_dsn)") from exc
    except psycopg.errors.LockNotAvailable:  # lock_timeout: the leader row stayed locked for LOCK_WAIT_MS
        raise ServiceUnavailable(f"{where}: a coordinator's transaction has held the leader row for over "
                                 f"{LOCK_WAIT_MS // 1000} s (stalled or deposed: find it in pg_stat_activity and "
                                 "stop it); nothing was forgotten") from None
    except (psycopg.Error, StoreLinkLost) as exc:  # a server shutting down, a cut link, a missing table
        raise ServiceUnavailable(f"{where}: {first_line(exc)}; nothing was forgotten") from exc
    finally:
        conn.close()  # ends the session: the advisory lock goes with it, whatever happened
    if not dry_run:
        log_forgotten(result)
    return result


def _preview(db, where: Where, wait: Wait) -> ForgetResult:
    from psycopg import IsolationLevel

    db.conn.read_only = True
    db.conn.isolation_level = IsolationLevel.REPEATABLE_READ
    with db.transaction():
        return plan(db, where, wait, _fedge_tables(db, where), dry_run=True)


def _forget(db, where: Where, wait: Wait, now_wall: float) -> ForgetResult:
    import psycopg
    from psycopg import IsolationLevel

    # Each statement after the bump must see the write the bump waited for (module docstring): a
    # database, role or DSN whose default isolation is REPEATABLE READ would read the snapshot taken
    # before it, and delete a device the round that write opened had just selected.
    db.conn.isolation_level = IsolationLevel.READ_COMMITTED
    with _leader_lock(db, where):
        committing = False
        try:
            with db.transaction():
                tables = _fedge_tables(db, where)  # before the bump: a foreign database has no leader table
                db.execute(f"SET LOCAL lock_timeout = {LOCK_WAIT_MS}")
                epoch = bump_epoch(db, f"forget-devices {socket.gethostname()}:{os.getpid()}", now_wall)
                result = plan(db, where, wait, tables, dry_run=False)
                if result.forgotten:
                    db.execute("DELETE FROM devices WHERE device_id = ANY(?)", (list(result.forgotten),))
                committing = True  # leaving the block commits
        except (psycopg.Error, StoreLinkLost) as exc:
            if not committing:
                raise
            # the link failed while the server committed, or not: this client cannot know which
            raise ServiceUnavailable(f"{where}: the commit failed ({first_line(exc)}): whether the devices were "
                                     "forgotten is unknown; run it again with --dry-run to see") from exc
    log.info("forget-devices: %s: leader epoch is now %d: a deposed leader's next write is fenced out", where, epoch)
    return result


@contextmanager
def _leader_lock(db, where: Where):
    """The lock a leader holds for its life (module docstring); ServiceUnavailable while one does."""
    (won,) = db.execute("SELECT pg_try_advisory_lock(?)", (LEADER_LOCK_KEY,)).fetchone()
    if not won:
        raise ServiceUnavailable(f"{where} is in use by another coordinator (it holds the leader lock, advisory "
                                 f"key {LEADER_LOCK_KEY}); stop every coordinator of it first")
    try:
        yield
    finally:  # best effort: closing the session (forget_devices_pg) releases it anyway
        with suppress(Exception):
            if not (db.conn.broken or db.conn.closed):
                db.execute("SELECT pg_advisory_unlock(?)", (LEADER_LOCK_KEY,))


def _fedge_tables(db, where: Where) -> set[str]:
    """The tables of the schema the store writes in; not_fedge_state unless it holds this build's schema."""
    tables = {name for (name,) in db.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = current_schema()")}
    row = db.execute("SELECT version FROM schema_version").fetchone() if "schema_version" in tables else None
    if row is None or row[0] != len(MIGRATIONS):
        raise not_this_schema(where, None if row is None else row[0], len(MIGRATIONS),
                              missing="no fedge schema_version visible to this role (the DSN's database, schema "
                              "and role: information_schema lists only tables the role may use)")
    return tables
