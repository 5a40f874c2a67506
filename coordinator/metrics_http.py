"""The coordinator's /metrics endpoint: prometheus_client's WSGI app, on a server that a client
of the port cannot use to stop the coordinator.

prometheus_client's start_http_server gives every connection a thread that waits for its
request with no timeout, and takes as many connections as come. Idle connections (a port
scanner, a slowloris, a scraper that hung) each held a thread and a file descriptor for as long
as they stayed open: 194 of them against a service run with RLIMIT_NOFILE 200 (systemd's
default soft limit is 1024) left its next payload-log open failing with EMFILE, and the
coordinator exited with GroupCommitFailed; scrapes timed out before that. Here each connection
has TIMEOUT_S for every read and write and for the whole connection (a client that trickles a
byte per read never trips a per-read timeout, and held its slot for as long as it trickled), and
at most MAX_CONNECTIONS are served at once: one more is closed as it is accepted. Every dropped
connection is counted once by why (DROP_REASONS, in fedge_metrics_http_dropped_total) and logged
(the first ten of a reason, then at powers of two), where the library printed a traceback to
stderr for each connection that timed out or reset.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
import threading
import time
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Counter, make_wsgi_app

from fedge.edge_runtime.kernel.errors import ConfigError, ServiceUnavailable
from fedge.edge_runtime.kernel.flood import so_far, worth_logging

# Prometheus's own scrape_timeout defaults to 10 s: a scraper that has not sent its request or
# read its answer by then has given up on it too.
TIMEOUT_S = 10.0
# A scrape takes one connection; two HA Prometheus servers and an operator's curl, a few. A few
# dozen held descriptors is what any number of clients can cost the coordinator.
MAX_CONNECTIONS = 32
OVER_LIMIT, TIMEOUT, CLIENT_ERROR = "over_limit", "timeout", "client_error"
DROP_REASONS = (OVER_LIMIT, TIMEOUT, CLIENT_ERROR)

log = logging.getLogger("fedge.coordinator.metrics")


class _Handler(WSGIRequestHandler):
    def setup(self) -> None:
        self.timeout = self.server.timeout_s  # StreamRequestHandler.setup puts it on the socket
        super().setup()

    def log_message(self, format, *args) -> None:  # noqa: A002 - the base class's name
        """Scrapes are not logged (prometheus_client does the same); dropped connections are."""


class MetricsHttpServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in flight never holds the process's exit
    request_queue_size = 64  # connections the kernel queues until accepted (socketserver: 5)

    def __init__(self, address: tuple, family: int, registry: CollectorRegistry, dropped: Counter, *,
                 timeout_s: float = TIMEOUT_S, max_connections: int = MAX_CONNECTIONS):
        self.address_family = family
        self.timeout_s = timeout_s
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.dropped = dropped
        self._drop_counts = dict.fromkeys(DROP_REASONS, 0)
        self._counting = threading.Lock()  # connection threads and their deadline timers count drops
        # Connections being served and not yet counted as dropped: a drop counts only a connection
        # still in it and takes it out, so one whose read timeout and deadline both fire counts once,
        # and nothing is left in it when its thread ends.
        self._live: set = set()
        super().__init__(address, _Handler)
        self.set_app(make_wsgi_app(registry))

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            self._drop(OVER_LIMIT, client_address, f"over {self.max_connections} connections at once")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)  # the connection's thread releases the slot
        except BaseException:
            self._slots.release()  # no thread started (none left to start): this slot was never used
            self._drop(CLIENT_ERROR, client_address, "no thread could be started to serve it")
            raise

    def process_request_thread(self, request, client_address) -> None:
        with self._counting:
            self._live.add(request)
        deadline = threading.Timer(self.timeout_s, self._past_deadline, (request, client_address))
        deadline.daemon = True
        try:
            deadline.start()
            super().process_request_thread(request, client_address)  # closes the request at the end
        finally:
            deadline.cancel()
            with self._counting:
                self._live.discard(request)
            self._slots.release()

    def _past_deadline(self, request, client_address) -> None:
        """The whole connection's deadline: take it (unless its thread ended it or counted it
        first), shut the socket down so its thread's read or write ends at once, and count it."""
        if not self._claim(request):
            return
        try:
            request.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed meanwhile
            pass
        self._count(TIMEOUT, client_address, f"not served within {self.timeout_s:g} s")

    def handle_error(self, request, client_address) -> None:
        """A connection whose handling raised (it went quiet past timeout_s, reset, sent what the
        server could not answer): one counted line, not the library's traceback on stderr."""
        exc = sys.exc_info()[1]
        reason = TIMEOUT if isinstance(exc, TimeoutError) else CLIENT_ERROR
        self._drop(reason, client_address, f"{type(exc).__name__}: {exc}", request)

    def _claim(self, request) -> bool:
        """Take a live connection out of _live: True once per connection, False when it was
        counted already (its deadline and its read timeout both fired) or its thread ended."""
        with self._counting:
            if request not in self._live:
                return False
            self._live.discard(request)
            return True

    def _drop(self, reason: str, client_address, why: str, request=None) -> None:
        if request is None or self._claim(request):
            self._count(reason, client_address, why)

    def _count(self, reason: str, client_address, why: str) -> None:
        with self._counting:
            n = self._drop_counts[reason] = self._drop_counts[reason] + 1
        self.dropped.labels(reason).inc()
        if worth_logging(n):
            log.warning("metrics endpoint: closed a connection from %s (%s): %s%s", _peer(client_address), reason,
                        why, so_far(n))


def _peer(client_address) -> str:
    return ":".join(str(part) for part in client_address[:2]) if isinstance(client_address, tuple) else "?"


def dropped_counter(registry: CollectorRegistry) -> Counter:
    """fedge_metrics_http_dropped_total{reason} on `registry`, every reason from zero."""
    dropped = Counter("fedge_metrics_http_dropped", "Connections to the metrics endpoint closed unserved, by why: "
                      "over_limit (too many at once), timeout, client_error", ["reason"], registry=registry)
    for reason in DROP_REASONS:
        dropped.labels(reason)
    return dropped


def start_metrics_server(registry: CollectorRegistry, host: str, port: int, dropped: Counter,
                         **limits) -> tuple[MetricsHttpServer, threading.Thread]:
    """Serve `registry` at http://host:port/metrics from a daemon thread; OSError if it cannot bind.
    limits: timeout_s, max_connections (MetricsHttpServer)."""
    # The address family as prometheus_client (and http.server) choose it: an IPv6 host binds IPv6.
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server = MetricsHttpServer((address[0], port), family, registry, dropped, **limits)
    thread = threading.Thread(target=server.serve_forever, name="fedge-metrics", daemon=True)
    thread.start()
    return server, thread


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9108, wait_s: float = 5.0):
    """Serve `registry` at http://host:port/metrics from a daemon thread; returns (server, thread).
    A port in use is tried again for `wait_s`: a standby that takes over on the same machine
    starts while the old leader's endpoint is still closing (a helper's failover: 5 ms apart)."""
    deadline = time.monotonic() + wait_s
    dropped = dropped_counter(registry)
    while True:
        try:
            return start_metrics_server(registry, host, port, dropped)
        except OSError as exc:
            where = f"metrics_port {port} on {host}: {exc.strerror or exc}"
            if exc.errno != errno.EADDRINUSE:  # a host it cannot bind, a port it may not use: the config's
                raise ConfigError(f"{where}; fix metrics_host or metrics_port (0: no endpoint)") from None
            if time.monotonic() >= deadline:  # held by another process: restartable, it may let go
                raise ServiceUnavailable(f"{where}; choose another port, or 0 for no endpoint") from None
            time.sleep(0.1)
