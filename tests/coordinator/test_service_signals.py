"""Signals to `fedge coordinator serve`, in its own process (the ops red team): SIGHUP killed it
by its default action, with no line in its log and the last Acks unflushed. Now it is logged
and ignored, and SIGTERM still ends the service with status 0. No broker is needed: the
service waits for one (an unreachable port) as it would at boot."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_sighup_is_logged_and_ignored_and_sigterm_still_stops_the_service(tmp_path):
    art_dir, _, _ = build_tiny_model(tmp_path / "artifacts")
    config = tmp_path / "coordinator.toml"
    config.write_text(f"""
[broker]
url = "mqtt://127.0.0.1:{_unused_port()}"

[coordinator]
artifacts_dir = "{art_dir}"
state_db = "{tmp_path / 'coordinator.db'}"
""")
    log = tmp_path / "coordinator.log"
    proc = subprocess.Popen([sys.executable, "-m", "fedge.tools.cli", "-v", "coordinator", "serve", "--config",
                             str(config)], stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    try:
        _wait_for_line(log, "not started yet", proc)  # serving: the handlers are in place
        proc.send_signal(signal.SIGHUP)
        _wait_for_line(log, "SIGHUP received and ignored", proc)
        proc.send_signal(signal.SIGHUP)  # a second one as well: the handler stays
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "stopped on SIGTERM/SIGINT" in text
    assert "Traceback" not in text
