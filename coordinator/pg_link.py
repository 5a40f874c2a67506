"""The TCP settings of every coordinator connection to PostgreSQL, so that a dead link fails, not hangs.

A network cut (a partition, a firewall that drops packets, a host gone without a RST) sends no
FIN and no RST. Without these settings, libpq then waits for the kernel: an idle connection is
never probed (the next write finds it dead), and a write in flight is retransmitted until
tcp_retries2 gives up, about 15 minutes on Linux, with the coordinator's one loop blocked all
that time (no messages, no deadlines, a stop that outlives systemd's TimeoutStopSec).

    keepalives_*        an idle connection is probed: dead after idle + interval * count
    tcp_user_timeout    data sent and not acknowledged for this long aborts the connection
                        (libpq >= 12; on Linux it also ends keepalive probing at this time)
    options -c ...      the server's side of the same session: it ends the backend, and so the
                        row locks of an open transaction (the leader row that store writes lock
                        FOR UPDATE, leadership.check_epoch), instead of holding them 2 hours

psycopg then raises OperationalError, and the connection is closed for good: named_link_errors
names it StoreLinkLost (PostgresStore, ShardTables), which stops the service (exit 1,
loop.STOPS_THE_SERVICE) or the aggregator worker (sharding/worker.py) for its supervisor to
restart it: the restart connects anew and resumes from the store.

What the operator's DSN sets itself (its own keepalives_*, tcp_user_timeout, options) wins over
these defaults (link_params).
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager, suppress

from .errors import StoreLinkLost

# 30 s: a healthy server acknowledges TCP segments at once even while it is busy (its kernel
# ACKs; a slow statement or an fsync stall delays the reply, not the ACK, and the reply is not
# timed here: save_devices writes 50,000 rows in about 1.2 s, pg_store.py), and a lossy link's
# retransmissions back off 0.2, 0.4, ... 12.8 s, 25.4 s in all for 7 lost in a row: 30 s of
# silence is a dead link or host, not a slow one. The coordinator's unit stops it within
# TimeoutStopSec=30s (hardware/systemd): a stop that lands while a write hangs on a cut link can
# run past that and end in SIGKILL, which the store survives as it survives kill -9.
STORE_TCP_USER_TIMEOUT_MS = 30_000
STORE_KEEPALIVES = (10, 5, 4)  # idle, interval, count (seconds, seconds, probes): dead after ~30 s
# A server that does not answer the connect is given up after this (libpq waits forever without
# one); the DSN's own connect_timeout, or else the environment's PGCONNECT_TIMEOUT, wins.
CONNECT_TIMEOUT_S = 10


def link_params(dsn: str, *, keepalives: tuple[int, int, int] = STORE_KEEPALIVES,
                tcp_user_timeout_ms: int = STORE_TCP_USER_TIMEOUT_MS, options: str = "") -> dict:
    """libpq connection parameters for psycopg.connect(dsn, **these): keepalives and tcp_user_timeout
    on both ends, and connect_timeout (CONNECT_TIMEOUT_S), each only where `dsn` does not set it
    (nor, for connect_timeout, PGCONNECT_TIMEOUT: libpq reads it only where none is passed).
    psycopg's keyword arguments replace the
    DSN's value of the same key, so a key the operator wrote in the DSN is left out here, and
    `options` holds ours, then the DSN's own, or else the environment's PGOPTIONS (a later -c wins:
    its search_path, its timeouts), then `options` (more `-c name=value`, e.g. a read-only session).
    A `service=` DSN's keys in pg_service.conf are not seen here: ours then win over that file's
    keepalives, tcp_user_timeout and options (README, PostgreSQL). The server side needs
    PostgreSQL 12 or later (tcp_user_timeout)."""
    idle, interval, count = keepalives
    ours = {"keepalives": 1, "keepalives_idle": idle, "keepalives_interval": interval,
            "keepalives_count": count, "tcp_user_timeout": tcp_user_timeout_ms}
    given = _dsn_params(dsn)
    # libpq reads PGOPTIONS only where no options are passed, and options are always passed here
    given.setdefault("options", os.environ.get("PGOPTIONS", ""))
    link = {key: given.get(key, value) for key, value in ours.items()}  # the server's side matches the client's
    server = (f"-c tcp_keepalives_idle={link['keepalives_idle']} "
              f"-c tcp_keepalives_interval={link['keepalives_interval']} "
              f"-c tcp_keepalives_count={link['keepalives_count']} -c tcp_user_timeout={link['tcp_user_timeout']}")
    params = {key: value for key, value in ours.items() if key not in given}
    params["options"] = " ".join(part for part in (server, given.get("options", ""), options) if part.strip())
    if "connect_timeout" not in given and not os.environ.get("PGCONNECT_TIMEOUT"):
        params["connect_timeout"] = CONNECT_TIMEOUT_S
    return params


def _dsn_params(dsn: str) -> dict:
    """The keys `dsn` sets (a URL or key=value), or none where it does not parse: connect then
    names the DSN's fault (pg_schema.connect: ConfigError). Never logged: it holds the password."""
    import psycopg  # optional dependency (fedge[postgres])
    from psycopg.conninfo import conninfo_to_dict

    try:
        return {key: value for key, value in conninfo_to_dict(dsn).items() if value is not None}
    except psycopg.Error:
        return {}


@contextmanager
def named_link_errors(conn, where: str):
    """An error that left psycopg connection `conn` broken (a cut link, a killed backend) as
    StoreLinkLost; any other (a statement timeout: the connection is fine) as it is."""
    import psycopg

    try:
        yield
    except psycopg.OperationalError as exc:
        if not (conn.broken or conn.closed):
            raise
        first = first_line(exc)
        raise StoreLinkLost(f"state_dsn {where}: the connection to PostgreSQL failed: {first}; "
                            "restart to reconnect and resume from the store") from exc


def first_line(exc: BaseException, last: bool = False) -> str:
    """The first (or `last`) line of a psycopg error's text, else its type's name: libpq's own
    text comes first; a connect failure lists each address tried, the cause in the last line."""
    lines = str(exc).strip().splitlines()
    return (lines[-1] if last else lines[0]) if lines else type(exc).__name__


class LinkedConnection:
    """A psycopg connection whose execute and transaction name a broken link StoreLinkLost
    (named_link_errors); the rest of it as it is."""

    def __init__(self, conn, where: str):
        self.conn = conn
        self.where = where

    def execute(self, *args, **kwargs):
        with named_link_errors(self.conn, self.where):
            return self.conn.execute(*args, **kwargs)

    @contextmanager
    def transaction(self):
        with named_link_errors(self.conn, self.where), self.conn.transaction() as tx:  # the commit's failure too
            yield tx

    def __getattr__(self, name):
        return getattr(self.conn, name)


def deadline_keepalives(ms: int) -> tuple[int, int, int]:
    """(idle, interval, count) in seconds whose probing ends within about `ms`: TCP_USER_TIMEOUT
    counts only data sent and not acknowledged, so a link cut while the client waits for a reply
    (its request acknowledged) is found by keepalives alone, after the connection's own ~30 s.
    Whole seconds, at least 2: under 2 s left (a drain's last moments) probing still takes ~2 s
    where statement_timeout, on the server, keeps the ms."""
    seconds = max(2, -(-int(ms) // 1000))
    idle = seconds // 2
    return idle, 1, max(1, seconds - idle)


_DEADLINE_OPTIONS = ((socket.SOL_SOCKET, socket.SO_KEEPALIVE), (socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                     (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                     (socket.IPPROTO_TCP, socket.TCP_KEEPCNT))


@contextmanager
def user_timeout(conn, ms: int):
    """Within: the TCP socket of psycopg connection `conn` aborts after `ms` of unacknowledged data,
    and its keepalives probe a silent wait for a reply within about the same (deadline_keepalives):
    a write deadline shorter than the connection's, e.g. a stop's drain; all restored after. A Unix
    socket has no such timeout and is left as it is."""
    sock = socket.socket(fileno=conn.pgconn.socket)  # the same socket, not a copy: detached below
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            yield
            return
        before = [sock.getsockopt(level, name) for level, name in _DEADLINE_OPTIONS]
        ms = max(1, int(ms))
        for (level, name), value in zip(_DEADLINE_OPTIONS, (1, ms, *deadline_keepalives(ms))):
            sock.setsockopt(level, name, value)
        try:
            yield
        finally:
            if not conn.closed:  # a failed write closed it: its descriptor may be another's now
                with suppress(OSError):  # a socket the kernel aborted meanwhile: nothing left to restore
                    for (level, name), value in zip(_DEADLINE_OPTIONS, before):
                        sock.setsockopt(level, name, value)
    finally:
        sock.detach()  # libpq owns the descriptor: closing it here would close the connection
