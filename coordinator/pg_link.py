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

psycopg then raises OperationalError, and the connection is closed for good: PostgresStore names
it StoreLinkLost (pg_store.py), which stops the service (exit 1, loop.STOPS_THE_SERVICE) for its
supervisor to restart it: the restart connects anew and resumes from the store.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager, suppress

# 30 s: a healthy server acknowledges TCP segments at once even while it is busy (its kernel
# ACKs; an fsync stall of a loaded disk, e.g. save_devices' 1.2-8.5 s for 50,000 rows, delays
# the reply, not the ACK, and the reply is not timed here), and a lossy link's retransmissions
# back off 0.2, 0.4, ... 12.8 s, 25.4 s in all for 7 lost in a row: 30 s of silence is a dead
# link or host, not a slow one. And short enough for ops: systemd's default TimeoutStopSec.
STORE_TCP_USER_TIMEOUT_MS = 30_000
STORE_KEEPALIVES = (10, 5, 4)  # idle, interval, count (seconds, seconds, probes): dead after ~30 s


def link_params(*, keepalives: tuple[int, int, int] = STORE_KEEPALIVES,
                tcp_user_timeout_ms: int = STORE_TCP_USER_TIMEOUT_MS, options: str = "") -> dict:
    """libpq connection parameters for psycopg.connect: keepalives and tcp_user_timeout on both
    ends; `options` (more `-c name=value`) are kept after them."""
    idle, interval, count = keepalives
    server = (f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
              f"-c tcp_keepalives_count={count} -c tcp_user_timeout={tcp_user_timeout_ms}")
    return {"keepalives": 1, "keepalives_idle": idle, "keepalives_interval": interval, "keepalives_count": count,
            "tcp_user_timeout": tcp_user_timeout_ms, "options": f"{server} {options}".strip()}


@contextmanager
def user_timeout(conn, ms: int):
    """Within: the TCP socket of psycopg connection `conn` aborts after `ms` of unacknowledged data
    (a write deadline shorter than the connection's, e.g. a stop's drain); restored after. A Unix
    socket has no such timeout and is left as it is."""
    sock = socket.socket(fileno=conn.pgconn.socket)  # the same socket, not a copy: detached below
    try:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            yield
            return
        before = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(ms)))
        try:
            yield
        finally:
            if not conn.closed:  # a failed write closed it: its descriptor may be another's now
                with suppress(OSError):  # a socket the kernel aborted meanwhile: nothing left to restore
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, before)
    finally:
        sock.detach()  # libpq owns the descriptor: closing it here would close the connection
