"""What a coordinator service cannot have right now is one line and exit status 1 (its
supervisor restarts it); a setting it cannot use is one line and exit 2. Both once ended in
tracebacks (a helper's PostgreSQL and failover walkthrough)."""

from __future__ import annotations

import socket

import pytest
from prometheus_client import CollectorRegistry

from fedge.coordinator.metrics import serve_metrics
from fedge.edge_runtime.kernel.errors import ConfigError, ServiceUnavailable
from fedge.tools.cli import _guarded


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_held_metrics_port_is_waited_for_then_named(capsys):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ServiceUnavailable, match=f"metrics_port {port}"):
            serve_metrics(CollectorRegistry(), "127.0.0.1", port, wait_s=0.3)

        class Args:
            verbose, log_format, command = 0, "text", "coordinator"

        def held_port():
            serve_metrics(CollectorRegistry(), "127.0.0.1", port, wait_s=0.0)

        assert _guarded(Args(), held_port) == 1  # restartable: the holder may let go
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(ConfigError, match="metrics_host"):  # not a port another process holds: the config's
        serve_metrics(CollectorRegistry(), "203.0.113.1", _free_port(), wait_s=0.0)


def test_a_database_that_refuses_is_one_line():
    pytest.importorskip("psycopg")
    from fedge.coordinator.pg_schema import connect

    with pytest.raises(ServiceUnavailable, match=r"state_dsn postgresql://fedge:\*\*\*@127.0.0.1:.*cannot connect"):
        connect(f"postgresql://fedge:secret@127.0.0.1:{_free_port()}/fedge", connect_timeout=2)
    with pytest.raises((ConfigError, ServiceUnavailable), match="invalid sslmode value"):  # libpq checks it
        connect("postgresql://fedge@127.0.0.1/fedge?sslmode=bogus", connect_timeout=2)
