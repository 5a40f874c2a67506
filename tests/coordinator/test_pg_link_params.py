"""The link settings of pg_link.py keep what the operator's DSN says, and a broken link is named
StoreLinkLost everywhere a coordinator or worker talks to PostgreSQL (the review's reproductions).

Oracles: the server itself (SHOW, information_schema), the kernel's view of the connection's socket
(getsockopt on a duplicate of libpq's descriptor) and pg_terminate_backend for a killed backend.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from fedge.coordinator.errors import StoreLinkLost
from fedge.coordinator.pg_link import deadline_keepalives, link_params, user_timeout
from fedge.coordinator.pg_store import PostgresStore
from fedge.coordinator.sharding.tables import ShardTables
from fedge.coordinator.sharding.worker import serve_shard
from fedge.coordinator.stored import StoredDevice

psycopg = pytest.importorskip("psycopg")
from psycopg.conninfo import make_conninfo  # noqa: E402 - after the skip

T0 = 1_800_000_000.0
TCP = socket.IPPROTO_TCP


def _with(dsn: str, form: str, **keys) -> str:
    """`dsn` with more keys, written as a URL query or as key=value pairs."""
    if form == "url":
        query = "&".join(f"{k}={v}".replace(" ", "%20").replace("search_path=", "search_path%3D")
                         for k, v in keys.items())
        return f"{dsn}?{query}"
    return make_conninfo(make_conninfo(dsn), **keys)


def _sockopts(conn, *names: int) -> list[int]:
    """The kernel's values of these TCP options on the connection's socket (a duplicate descriptor)."""
    with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
        return [sock.getsockopt(TCP, name) for name in names]


def _terminate(dsn: str, pid: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        assert db.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
    time.sleep(0.2)  # the backend exits; the next statement on its connection finds it gone


@pytest.mark.parametrize("form", ["url", "key=value"])
def test_the_dsn_options_are_kept_so_the_store_opens_its_own_schema(postgres_dsn, form):
    """Before: link_params' options replaced the DSN's, so search_path fell back to public and the
    store migrated a fresh empty schema there (a silent fresh start)."""
    with psycopg.connect(postgres_dsn, autocommit=True) as db:
        db.execute("CREATE SCHEMA myschema")
    store = PostgresStore(_with(postgres_dsn, form, options="-c search_path=myschema"))
    try:
        assert store._db.conn.execute("SHOW search_path").fetchone()[0] == "myschema"
        assert store._db.conn.execute("SHOW tcp_user_timeout").fetchone()[0] == "30000"  # ours still on
    finally:
        store.close()
    with psycopg.connect(postgres_dsn, autocommit=True) as db:  # the server's view: the tables are in myschema
        schemas = {s for (s,) in db.execute("SELECT DISTINCT table_schema FROM information_schema.tables "
                                            "WHERE table_name = 'devices'").fetchall()}
    assert schemas == {"myschema"}


@pytest.mark.parametrize("form", ["url", "key=value"])
def test_the_dsn_own_timeouts_win_over_the_defaults(postgres_dsn, form):
    """Before: tcp_user_timeout=5000 and keepalives_idle=60 in the DSN became 30000 and 10."""
    store = PostgresStore(_with(postgres_dsn, form, tcp_user_timeout="5000", keepalives_idle="60"))
    try:
        conn = store._db.conn
        assert _sockopts(conn, socket.TCP_USER_TIMEOUT, socket.TCP_KEEPIDLE) == [5000, 60]
        assert _sockopts(conn, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT) == [5, 4]  # what it does not set: ours
        # the server's side follows the client's
        assert conn.execute("SHOW tcp_user_timeout").fetchone()[0] == "5000"
        assert conn.execute("SHOW tcp_keepalives_idle").fetchone()[0] == "60"
    finally:
        store.close()


def test_write_deadline_on_a_connection_already_broken_is_store_link_lost(postgres_dsn):
    """Before: psycopg's unnamed OperationalError from pgconn.socket, ahead of named_link_errors."""
    store = PostgresStore(postgres_dsn)
    try:
        _terminate(postgres_dsn, store._db.conn.info.backend_pid)
        with pytest.raises(StoreLinkLost):
            store.save_devices([StoredDevice("a", T0, True, "", 5)])
        assert store._db.conn.closed
        with pytest.raises(StoreLinkLost, match="state_dsn"):
            with store.write_deadline(1.0):
                pass
    finally:
        store.close()


def test_the_shard_tables_name_a_killed_backend_store_link_lost(postgres_dsn):
    """Before: open_round raised psycopg's AdminShutdown, which serve_shard logged per burst."""
    tables = ShardTables(postgres_dsn)
    try:
        _terminate(postgres_dsn, tables.conn.info.backend_pid)
        with pytest.raises(StoreLinkLost, match="state_dsn"):
            tables.open_round()
        with pytest.raises(StoreLinkLost):  # the transactions too, not only the plain statements
            tables.reassign(1, {0}, frozenset({1}))
    finally:
        tables.close()


class _OneMessageTransport:
    """A transport that always holds one more message (a device resending its update)."""

    def subscribe(self, *_args, **_kwargs) -> None:
        pass

    def receive(self, timeout: float):
        return object()


class _Lease:
    def check(self) -> None:
        pass


class _Worker:
    """serve_shard's view of a worker whose every burst goes to the real (killed) shard tables."""

    shard, epoch = 0, 1

    def __init__(self, tables: ShardTables):
        self.tables = tables
        self.transport = _OneMessageTransport()
        self.bursts = 0

    def refresh(self) -> None:
        pass

    def handle_burst(self, burst) -> None:
        self.bursts += 1
        self.tables.open_round()


def test_a_worker_stops_when_its_tables_connection_is_lost(postgres_dsn):
    """Before: `except Exception` logged a traceback per burst and served on, forever, on a
    connection that never works again. Now StoreLinkLost leaves serve_shard (exit 1: restart)."""
    tables = ShardTables(postgres_dsn)
    worker, stop, out = _Worker(tables), threading.Event(), []
    try:
        _terminate(postgres_dsn, tables.conn.info.backend_pid)

        def serve() -> None:
            try:
                serve_shard(worker, _Lease(), stop)
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                out.append(exc)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        thread.join(30.0)
        stop.set()
        thread.join(5.0)
        assert out and isinstance(out[0], StoreLinkLost), (out, worker.bursts)
        assert worker.bursts == 1
    finally:
        tables.close()


def test_user_timeout_sets_the_deadline_keepalives_and_restores_them(postgres_dsn):
    """A link cut while the client waits for a reply has no unacknowledged data, so only keepalives
    find it: within write_deadline they fit the deadline; after it, the connection's own again."""
    names = (socket.TCP_USER_TIMEOUT, socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
    store = PostgresStore(postgres_dsn)
    try:
        conn = store._db.conn
        with socket.socket(fileno=os.dup(conn.pgconn.socket)) as sock:
            assert sock.family == socket.AF_INET  # TCP: a Unix socket has no such options
        before = _sockopts(conn, *names)
        assert before == [30_000, 10, 5, 4]
        with user_timeout(conn, 2000):
            assert _sockopts(conn, *names) == [2000, *deadline_keepalives(2000)]
            assert conn.execute("SELECT 1").fetchone() == (1,)  # the connection still works within
        assert _sockopts(conn, *names) == before
    finally:
        store.close()


@pytest.mark.parametrize("ms", [1, 999, 1000, 1500, 2000, 2001, 10_000, 29_999])
def test_deadline_keepalives_end_probing_within_the_deadline(ms):
    idle, interval, count = deadline_keepalives(ms)
    assert min(idle, interval, count) >= 1  # the kernel refuses 0
    assert idle + interval * count <= max(2, -(-ms // 1000))  # whole seconds: 2 s at the least


def test_pgoptions_is_kept_when_the_dsn_sets_no_options(monkeypatch):
    """libpq reads PGOPTIONS only where no options are passed, and link_params always passes
    them: a service's PGOPTIONS (a lock_timeout) was dropped for every store connection."""
    monkeypatch.setenv("PGOPTIONS", "-c lock_timeout=1234")
    assert link_params("host=db dbname=fedge")["options"].endswith("-c lock_timeout=1234")
    assert "lock_timeout" not in link_params("host=db options='-c search_path=s'")["options"]


@pytest.mark.parametrize("form", ["url", "key=value"])
def test_the_dsn_connect_timeout_wins_over_the_default(postgres_dsn, form, monkeypatch):
    """Before: every connection passed connect_timeout=10 as a keyword, which replaced the DSN's own
    (and the environment's PGCONNECT_TIMEOUT). Oracle: libpq's own record of the connection's parameters."""
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    store = PostgresStore(_with(postgres_dsn, form, connect_timeout="3"))
    try:
        assert store._db.conn.info.get_parameters()["connect_timeout"] == "3"
    finally:
        store.close()
    store = PostgresStore(postgres_dsn)  # none given: ours, so a silent server is given up
    try:
        assert store._db.conn.info.get_parameters()["connect_timeout"] == "10"
    finally:
        store.close()


def test_pgconnect_timeout_is_kept_when_the_dsn_sets_none(monkeypatch):
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    assert "connect_timeout" not in link_params("host=db dbname=fedge")  # libpq then reads the environment
    monkeypatch.delenv("PGCONNECT_TIMEOUT")
    assert link_params("host=db dbname=fedge")["connect_timeout"] == 10
    assert "connect_timeout" not in link_params("host=db dbname=fedge connect_timeout=2")
