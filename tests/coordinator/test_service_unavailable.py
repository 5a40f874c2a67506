"""What a coordinator service cannot have right now is one line and exit status 1 (its
supervisor restarts it); a setting it cannot use is one line and exit 2. Both once ended in
tracebacks (a helper's PostgreSQL and failover walkthrough)."""

from __future__ import annotations

import os
import socket

import pytest
from prometheus_client import CollectorRegistry

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.metrics_http import serve_metrics
from fedge.edge_runtime.kernel.errors import ArtifactError, ConfigError, ServiceUnavailable
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


class _ServeArgs:
    verbose, log_format, command, coordinator_command = 0, "text", "coordinator", "serve"


def test_a_second_service_on_the_same_state_db_is_refused_at_start(tmp_path, capsys):
    """Two services on one SQLite state_db both resumed its open round and wrote to it; over
    Mosquitto the first died within a second (GroupCommitFailed) and the second went on."""
    from fedge.coordinator.service import ServiceConfig, run_service
    from fedge.coordinator.state_lock import state_db_lock

    db = tmp_path / "coordinator.db"
    cfg = ServiceConfig(coordinator=CoordinatorConfig(artifacts_dir=str(tmp_path / "no-artifacts"),
                                                      state_db=str(db), metrics_port=0))
    with state_db_lock(db):  # the first service
        # which process to stop: the holder's pid (here ours)
        with pytest.raises(ServiceUnavailable, match=f"in use by another coordinator \\(pid {os.getpid()} holds "):
            run_service(cfg)  # refused before it reads anything (the artifacts do not even exist)
        assert _guarded(_ServeArgs(), lambda: run_service(cfg)) == 1  # its supervisor tries again
    assert capsys.readouterr().err.count("\n") == 1
    assert not db.exists()  # nothing of the state was touched
    with pytest.raises(ArtifactError):  # the first gone, the lock is free: start goes on
        run_service(cfg)


def test_a_state_db_in_a_missing_folder_is_a_config_error(tmp_path, capsys):
    """`state_db = "nodir/c.db"` stopped `fedge coordinator serve` with a FileNotFoundError
    traceback from the lock file; it is a config error (exit 2), naming the folder."""
    from fedge.coordinator.service import ServiceConfig, run_service

    db = tmp_path / "nodir" / "coordinator.db"
    cfg = ServiceConfig(coordinator=CoordinatorConfig(artifacts_dir=str(tmp_path / "no-artifacts"),
                                                      state_db=str(db), metrics_port=0))
    with pytest.raises(ConfigError, match=f"no folder {tmp_path / 'nodir'}"):
        run_service(cfg)
    assert _guarded(_ServeArgs(), lambda: run_service(cfg)) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "nodir").exists()  # no folder made on a guess


def test_a_failed_group_commit_exits_with_a_status_its_supervisor_restarts_on():
    """A failed write stops the service so that its restart resumes from the store (group_commit.py);
    it exited 2, which hardware/systemd/fedge-coordinator.service never restarts (a config error)."""
    from fedge.coordinator.errors import GroupCommitFailed

    def failed():
        raise GroupCommitFailed("2 accepted updates of round 3 could not be stored: disk I/O error")

    assert _guarded(_ServeArgs(), failed) == 1


def test_the_services_sigterm_handler_needs_no_lock_the_interrupted_thread_holds(tmp_path, monkeypatch):
    """SIGTERM/SIGINT stop the service through kernel/signal_safe.py: the handler's Event set() once
    ran in the handler, where it waited on the lock the interrupted main thread's own wait() held."""
    import signal
    import threading

    from fedge.coordinator import service

    handlers, events = {}, []
    monkeypatch.setattr(service.signal, "signal", lambda sig, handler: handlers.__setitem__(sig, handler))
    monkeypatch.setattr(service, "run_worker", lambda cfg, stopping, link: events.append(stopping) or 0)
    cfg = service.ServiceConfig(coordinator=CoordinatorConfig(artifacts_dir=str(tmp_path)))
    assert service.run_service(cfg, "worker") == 0
    stopping = events[0]

    def interrupted():  # the Event's lock held, as by a wait() the signal interrupts
        with stopping._cond:
            handlers[signal.SIGTERM](signal.SIGTERM, None)

    main = threading.Thread(target=interrupted, daemon=True)
    main.start()
    main.join(5)
    assert not main.is_alive(), "the SIGTERM handler waited on the lock its own thread held"
    assert stopping.wait(5)
