"""One leader among coordinators that share a PostgreSQL database, with fencing.

A coordinator becomes leader by taking a session-level advisory lock, pg_try_advisory_lock,
on a connection of its own: the lease. PostgreSQL drops the lock when that session ends (the
process was killed, the connection was lost), so a standby that polls the lock takes over
within its poll interval; nothing has to expire.

The lock alone cannot stop a leader that has lost it: its store writes on another session,
and a process that stalls (a swap storm, SIGSTOP, a cut network) can wake after a standby
took over. So a new leader bumps `leader.epoch` when it wins, and every write transaction of
its PostgresStore first locks the leader row (SELECT ... FOR UPDATE, `check_epoch`) and
refuses with FencedOut when the epoch there is not its own. The bump and a write exclude each
other on that row lock: a write of the old leader either commits before the bump or sees the
new epoch and rolls back. Hence no round can be committed, opened, abandoned or have an
update acknowledged by a deposed leader.

    FedgeError
    └── LeadershipError
        ├── FencedOut      a newer leader exists; this store's writes are refused
        └── LeaseLost      the lease's connection failed: the lock is gone or soon will be

`fedge coordinator serve` exits on either (service.py), so a supervisor restarts it as a
standby. psycopg is imported when a lease is made, never by importing this module.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from fedge.edge_runtime.kernel.errors import FedgeError

from .pg_link import link_params
from .pg_schema import connect, migrate, redact

log = logging.getLogger("fedge.coordinator.leadership")
LEADER_LOCK_KEY = 0x6665646765  # pg_try_advisory_lock key ("fedge"); advisory locks are per database
# A silent lease session is declared dead after about idle + interval * count = 11 s, by the
# client (libpq's keepalives_*) and by the server (its tcp_keepalives_* settings, which any
# session may set for itself; they apply over TCP, not Unix sockets). A standby then takes
# over within that plus its poll interval. Keepalives probe an idle link only: check() runs
# every 0.5 s, and a query in flight on a cut link is retransmitted for ~15 minutes unless
# tcp_user_timeout (the same 11 s) ends it (pg_link.py, stricter than the store's 30 s).
LEASE_KEEPALIVES = {"keepalives": (5, 2, 3), "tcp_user_timeout_ms": 11_000}  # link_params' arguments


class LeadershipError(FedgeError):
    pass


class FencedOut(LeadershipError):
    """A newer leader's epoch is in the database: this coordinator must stop writing."""


class LeaseLost(LeadershipError):
    """The lease's connection failed, so the advisory lock is gone (or will be when the server notices)."""


def check_epoch(db, epoch: int, where: str) -> None:
    """Inside a write transaction: lock the leader row and refuse unless `epoch` is the current one."""
    row = db.execute("SELECT epoch FROM leader WHERE id = 1 FOR UPDATE").fetchone()
    if row is None or row[0] != epoch:
        current = None if row is None else row[0]
        raise FencedOut(f"{where}: leader epoch is {current}, this coordinator's is {epoch}; a newer leader took over")


def bump_epoch(db, holder: str, since_wall: float) -> int:
    """Inside a transaction on psycopg connection `db`: store the next leader epoch (1 for a fresh
    database) and return it. Every store holding an older epoch is fenced out from its next write
    on (check_epoch); the row lock this takes waits for a write in flight, which then commits first.
    A new leader calls it when it wins, and so does forget-devices (forget_devices_pg.py)."""
    (epoch,) = db.execute(
        "INSERT INTO leader (id, epoch, holder, since_wall) VALUES (1, 1, %s, %s) ON CONFLICT (id) DO UPDATE "
        "SET epoch = leader.epoch + 1, holder = excluded.holder, since_wall = excluded.since_wall "
        "RETURNING epoch", (holder, since_wall)).fetchone()
    return epoch


class PostgresLease:
    """The advisory lock and the epoch it was won with (None while standby)."""

    def __init__(self, dsn: str, *, key: int = LEADER_LOCK_KEY, holder: str = ""):
        import psycopg  # optional dependency (fedge[postgres]): only a coordinator with state_dsn needs it

        self.where = redact(dsn)
        self.key = key
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self.epoch: int | None = None
        self._errors = psycopg.Error
        # autocommit: a plain SELECT must not open a transaction that lives as long as the lease.
        # Keepalives both ways (LEASE_KEEPALIVES): the lock is released only when the server sees
        # the session end, which after a network cut (no FIN, no RST) takes its TCP keepalive,
        # 2 hours by Linux's default; and check() must fail, not hang, on a dead link.
        self._conn = connect(dsn, autocommit=True, **link_params(dsn, **LEASE_KEEPALIVES))
        migrate(self._conn, self.where)  # the leader table must exist before anyone bumps it

    def try_acquire(self) -> bool:
        """Take the lock if it is free; on winning, bump the epoch (the fencing token)."""
        if self.epoch is not None:
            return True
        (won,) = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self.key,)).fetchone()
        if not won:
            return False
        with self._conn.transaction():
            self.epoch = self._bump()
        log.info("%s: %s holds %s with epoch %d", self.role, self.holder, self.where, self.epoch)
        return True

    role = "leader"

    def _bump(self) -> int:
        """Inside a transaction: the next epoch of this lease, stored (a subclass fences another row)."""
        return bump_epoch(self._conn, self.holder, time.time())

    def _current(self):
        """The stored epoch row of this lease, or None."""
        return self._conn.execute("SELECT epoch FROM leader WHERE id = 1").fetchone()

    def wait(self, stop: threading.Event, poll_s: float = 0.2) -> bool:
        """Poll until leader (True) or `stop` is set (False)."""
        said = False
        while not self.try_acquire():
            if not said:
                log.info("standby: waiting for leadership of %s", self.where)
                said = True
            if stop.wait(poll_s):
                return False
        return True

    def check(self) -> None:
        """Raise LeaseLost if the lease's session is gone, FencedOut if another epoch is current."""
        try:
            row = self._current()
        except self._errors as exc:
            raise LeaseLost(f"{self.where}: the leadership connection failed: {exc}") from exc
        if self.epoch is not None and (row is None or row[0] != self.epoch):
            raise FencedOut(f"{self.where}: leader epoch is {row and row[0]}, this coordinator's is {self.epoch}")

    def close(self) -> None:
        """Ending the session releases the lock; unlocked first, so that whoever polls for it next
        sees it free at once (the server ends a closed session's backend a moment later)."""
        try:
            self._conn.execute("SELECT pg_advisory_unlock_all()")
        except Exception:  # noqa: BLE001 - a broken session: closing it is all that is left
            pass
        self._conn.close()


def watch_lease(lease: PostgresLease, on_lost, stop: threading.Event, interval_s: float = 0.5) -> threading.Thread:
    """A daemon thread that checks the lease every interval_s and calls on_lost(error) once if it fails."""

    def run() -> None:
        while not stop.wait(interval_s):
            try:
                lease.check()
            except LeadershipError as exc:
                on_lost(exc)
                return

    thread = threading.Thread(target=run, name="lease-watch", daemon=True)
    thread.start()
    return thread
