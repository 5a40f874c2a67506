"""Signal handlers that take no lock the interrupted code may hold.

A Python signal handler runs in the main thread, between two of its bytecodes; fedge's loops run
in the main thread too, waiting on a threading.Event. A handler that called that Event's set()
needed the lock the interrupted wait() or clear() may have been holding at that very bytecode:
the handler waited for itself, forever (the coordinator's SIGHUP flag, reproduced with a flood of
signals). `on_another_thread` runs the handler's work on a fresh thread instead: the handler only
starts it (threading's own start lock is re-entrant), the main thread resumes and lets go of the
lock, and the work then gets it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


def on_another_thread(work: Callable[[], object], name: str) -> Callable[..., None]:
    """A signal handler that runs `work()` on a new daemon thread named `name`."""
    def handler(*_) -> None:
        threading.Thread(target=work, name=name, daemon=True).start()
    return handler
