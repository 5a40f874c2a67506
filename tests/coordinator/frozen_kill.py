"""Kill -9 a service process at a state the test has seen, not one it saw a moment ago: the
process is frozen (SIGSTOP) while its store is read, so nothing it does between the look and
the kill (an update stored, a buffer flushed on a stalled test machine) can change what it
dies with. SQLite in WAL mode (the service's store) lets the read go on while the frozen
writer holds its locks; what the read sees is the committed state the kill leaves behind."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

State = TypeVar("State")


def kill9_once(what: str, proc: subprocess.Popen, state: Callable[[], State], ready: Callable[[State], bool],
               timeout_s: float, log: Path | None = None) -> State:
    """SIGKILL `proc` the first time `ready(state())` holds, read while it is frozen; returns that state."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        proc.send_signal(signal.SIGSTOP)
        try:
            seen = state()
            if ready(seen):
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=10)
                return seen
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what} (exit status {proc.poll()})\n{tail}")
