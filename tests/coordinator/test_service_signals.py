"""Signals to `fedge coordinator serve`, in its own process (the ops red team): SIGHUP killed it
by its default action, with no line in its log and the last Acks unflushed. Now it is logged
and ignored, and SIGTERM still ends the service with status 0; with an identity directory it
re-reads that file (coordinator/secagg/reload.py). No broker is needed: the service waits for
one (an unreachable port) as it would at boot."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.secagg.fleet_round import provision
from tests.tiny_model import build_tiny_model

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_line(log: Path, text: str, proc: subprocess.Popen, wait_s: float = 120.0) -> None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the service exited ({proc.returncode}) before logging {text!r}:\n"
                                 f"{log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} in the log:\n{log.read_text()[-2000:]}")


@contextmanager
def _serving(tmp_path: Path, extra: str = "") -> Iterator[tuple[subprocess.Popen, Path]]:
    """`fedge coordinator serve` on the tiny model, its broker unreachable, killed at the end if
    still up; `extra`: more [coordinator] config."""
    art_dir, _, _ = build_tiny_model(tmp_path / "artifacts")
    config = tmp_path / "coordinator.toml"
    config.write_text(f"""
[broker]
url = "mqtt://127.0.0.1:{_unused_port()}"

[coordinator]
artifacts_dir = "{art_dir}"
state_db = "{tmp_path / 'coordinator.db'}"
{extra}""")
    log = tmp_path / "coordinator.log"
    proc = subprocess.Popen([sys.executable, "-m", "fedge.tools.cli", "-v", "coordinator", "serve", "--config",
                             str(config)], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sighup_is_logged_and_ignored_and_sigterm_still_stops_the_service(tmp_path):
    with _serving(tmp_path) as (proc, log):
        _wait_for_line(log, "not started yet", proc)  # serving: the handlers are in place
        proc.send_signal(signal.SIGHUP)
        _wait_for_line(log, "SIGHUP received and ignored", proc)
        proc.send_signal(signal.SIGHUP)  # a second one as well: the handler stays
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    text = log.read_text()
    assert "stopped on SIGTERM/SIGINT" in text
    assert "Traceback" not in text


def test_sighup_reloads_the_identity_directory_and_a_broken_file_keeps_the_old_one(tmp_path):
    """With directory_file, SIGHUP re-reads it (while the service still waits for its broker):
    dev1, provisioned since the start, is added (logged, counted ok on /metrics); a file broken
    after that keeps the two identities, logged and counted failed; the service goes on and
    SIGTERM still stops it with status 0."""
    _, path = provision(["dev0", "dev1"], tmp_path)
    both = path.read_text()
    path.write_text(json.dumps({k: v for k, v in json.loads(both).items() if k != "dev1"}))
    port = _unused_port()

    def reloads() -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        return {result: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                for result in ("ok", "failed")
                if line.startswith(f'fedge_secagg_directory_reloads_total{{result="{result}"}}')}

    with _serving(tmp_path, f"""clients_per_round = 6
min_reports = 3
metrics_port = {port}

[coordinator.secure_aggregation]
enabled = true
clip_range = 0.5
directory_file = "{path}"
""") as (proc, log):
        _wait_for_line(log, "not started yet", proc)
        path.write_text(both)
        proc.send_signal(signal.SIGHUP)
        _wait_for_line(log, "2 identities, 1 added, 0 removed, 0 re-keyed", proc)
        assert reloads() == {"ok": 1, "failed": 0}
        path.write_text("{")
        proc.send_signal(signal.SIGHUP)
        _wait_for_line(log, "the 2 identities read before stay in use", proc)
        assert reloads() == {"ok": 1, "failed": 1}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    text = log.read_text()
    assert f"identity directory {path} not reloaded" in text
    assert "SIGHUP received and ignored" not in text and "Traceback" not in text
