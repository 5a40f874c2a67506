"""A cut link to PostgreSQL fails the coordinator's write in bounded time (coordinator/pg_link.py),
not after the kernel's ~15 minutes of retransmissions with the service's one loop blocked.

The link is cut by a proxy written here (Blackhole): it relays until it goes black, then keeps
both sockets open and moves no byte either way, so no FIN or RST reaches the client. On loopback
the proxy's kernel still acknowledges what fits its receive window, so the proxy keeps that window
small (SO_RCVBUF) and goes black as the write's large statement starts to arrive (the link dies
mid-write; BEGIN and the small statements before it passed): the rest waits on a zero window,
which tcp_user_timeout ends (Linux >= 5.11) as it ends a real cut's retransmissions. A cut before
a small statement (a lease check, a BEGIN) cannot be staged this way without root's firewall.

Oracles: the server itself (a direct connection, not through the proxy: none of the write's rows
are there) and the caller's outcome (the named error, within the bound). Each write runs in a
thread joined with a timeout, so without the link settings the test fails at the join instead
of hanging. The bound is injected small (2 s); the production value (30 s) is never waited for.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

import pytest

from fedge.coordinator.errors import StoreLinkLost
from fedge.coordinator.loop import STOPS_THE_SERVICE
from fedge.coordinator.pg_store import PostgresStore
from fedge.coordinator.registry import Registry
from fedge.coordinator.stored import StoredDevice

psycopg = pytest.importorskip("psycopg")

T0 = 1_800_000_000.0
SLACK_S = 30.0  # on top of a bound: generous, so a loaded machine does not fail the test
ROWS = 20_000  # ~2 MB of statement: far over the proxy's window


class Blackhole:
    """A TCP proxy to `upstream` that relays until it goes black, then holds its sockets silently:
    at go_black(), or once armed (arm()) when the client sent over `arm`'s bytes since."""

    def __init__(self, upstream: tuple[str, int], window: int = 4096):
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window)  # inherited by accepted sockets
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.black = threading.Event()
        self.black_from: int | None = None  # arm()'s threshold
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(client, selectors.EVENT_READ, server)
        sel.register(server, selectors.EVENT_READ, client)
        while not self.closed.is_set():
            if self.black.is_set():  # read nothing, send nothing, close nothing
                self.closed.wait(0.1)
                continue
            for key, _ in sel.select(0.1):
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                if key.fileobj is client and self.black_from is not None:
                    self.black_from -= len(data)
                    if self.black_from < 0:
                        self.black.set()  # this read is not relayed: the link died under it
                        break
                key.data.sendall(data)

    def go_black(self) -> None:
        self.black.set()

    def arm(self, more_than: int = 16384) -> None:
        self.black_from = more_than

    def close(self) -> None:
        self.closed.set()
        for s in self.sockets:
            s.close()


@pytest.fixture
def proxied(postgres_server, postgres_dsn):
    """(the DSN through a Blackhole, the proxy, the direct DSN)."""
    proxy = Blackhole(("127.0.0.1", postgres_server.port))
    yield postgres_dsn.replace(f":{postgres_server.port}/", f":{proxy.port}/"), proxy, postgres_dsn
    proxy.close()


def _in_thread(call, join_s: float) -> tuple[bool, object, float]:
    """(finished within join_s, what it returned or raised, seconds taken)."""
    out: list = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:  # noqa: BLE001 - handed to the test to assert on
            out.append(exc)

    start = time.monotonic()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(join_s)
    return not thread.is_alive(), out[0] if out else None, time.monotonic() - start


def _devices(n: int, wall: float) -> list[StoredDevice]:
    return [StoredDevice(f"device-{i:06d}-" + "x" * 80, wall, True, "", 5) for i in range(n)]


def _stored_count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as db:
        return db.execute("SELECT count(*) FROM devices").fetchone()[0]


def test_a_write_on_a_cut_link_fails_with_store_link_lost_within_tcp_user_timeout(proxied):
    """Before: no tcp_user_timeout, no keepalives: save_devices blocked until the kernel gave up
    (zero-window probes that are answered never give up; a real cut, ~15 minutes)."""
    dsn, proxy, direct = proxied
    store = PostgresStore(dsn, tcp_user_timeout_ms=2000)
    try:
        store.save_devices(_devices(3, T0))  # the link works until it is cut
        assert _stored_count(direct) == 3
        proxy.arm()
        finished, outcome, took = _in_thread(lambda: store.save_devices(_devices(ROWS, T0 + 1)), 2.0 + SLACK_S)
        assert finished, f"save_devices still blocked {took:.0f} s after the link was cut"
        assert isinstance(outcome, StoreLinkLost), outcome  # not a success, not psycopg's unnamed error
        assert "state_dsn" in str(outcome) and isinstance(outcome, STOPS_THE_SERVICE)
        assert proxy.black.is_set()  # the write was under way when the link died
        # the connection is gone for good: the next write says so at once, with the same name
        finished, again, _ = _in_thread(lambda: store.save_devices(_devices(1, T0 + 2)), SLACK_S)
        assert finished and isinstance(again, StoreLinkLost)
    finally:
        store.close()
    assert _stored_count(direct) == 3  # the server's own view: nothing of the cut write committed


def test_the_stop_drain_ends_within_its_budget_on_a_cut_link(proxied):
    """Before: drain_refreshes checked its budget only between writes, so one write on a cut link
    held the stop past systemd's TimeoutStopSec. Now each write is bounded by what is left of the
    budget (write_deadline), well inside the connection's own 30 s tcp_user_timeout."""
    dsn, proxy, direct = proxied
    store = PostgresStore(dsn)  # the production link settings: a 30 s tcp_user_timeout
    try:
        store.save_devices(_devices(ROWS, T0 - 7 * 86_400.0))  # rows a week old: every check-in queues a refresh
        reg = Registry(store)
        reg.restore(0.0, T0)
        for d in _devices(ROWS, T0):
            reg.register(d.device_id, True, "", 5, 1.0, T0 + 1.0, "fp")
        assert len(reg.queued_refreshes) == ROWS
        proxy.arm()
        budget = 2.0
        finished, outcome, took = _in_thread(lambda: reg.drain_refreshes(time.monotonic, budget_s=budget),
                                             budget + SLACK_S)
        assert finished, f"the drain still blocked {took:.0f} s after the link was cut"
        assert took < 30.0, f"the drain took {took:.1f} s: bounded by the connection's timeout, not its budget"
        assert isinstance(outcome, StoreLinkLost), outcome
        assert len(reg.queued_refreshes) == ROWS  # the failed batch is queued again (registry.py)
    finally:
        store.close()
    with psycopg.connect(direct, autocommit=True) as db:  # nothing of the drain reached the table
        assert db.execute("SELECT max(last_seen_wall) FROM devices").fetchone()[0] == T0 - 7 * 86_400.0


def test_the_stop_drain_bounds_a_statement_the_server_holds(postgres_dsn):
    """A reachable server that holds the drain's write (here: another session locks the rows) has
    it cancelled by statement_timeout within the budget; what was queued stays queued."""
    store = PostgresStore(postgres_dsn)
    blocker = psycopg.connect(postgres_dsn)
    try:
        store.save_devices(_devices(10, T0 - 7 * 86_400.0))
        reg = Registry(store)
        reg.restore(0.0, T0)
        for d in _devices(10, T0):
            reg.register(d.device_id, True, "", 5, 1.0, T0 + 1.0, "fp")
        blocker.execute("SELECT * FROM devices FOR UPDATE")  # held until the test ends
        budget = 2.0
        finished, outcome, took = _in_thread(lambda: reg.drain_refreshes(time.monotonic, budget_s=budget),
                                             budget + SLACK_S)
        assert finished, f"the drain still waited on the lock {took:.0f} s later"
        assert isinstance(outcome, psycopg.errors.QueryCanceled), outcome
        assert len(reg.queued_refreshes) == 10
        blocker.rollback()
        assert reg.drain_refreshes(time.monotonic, budget_s=budget) == 10  # the same store, healthy again
    finally:
        blocker.close()
        store.close()
