"""kernel/signal_safe.py: a handler that must not take a lock the interrupted main thread holds."""

from __future__ import annotations

import signal
import threading

from fedge.edge_runtime.kernel.signal_safe import on_another_thread


def test_the_handler_returns_while_the_interrupted_thread_holds_the_events_lock():
    """As when a signal lands while the main thread is inside the Event's wait() or clear(): the
    Event's set() called in the handler waited for that lock, held by the thread it interrupted,
    forever. The handler returns at once; the work runs once the lock is let go."""
    stop = threading.Event()
    handler = on_another_thread(stop.set, "fedge-stop")
    returned = threading.Event()

    def interrupted_main_thread():
        with stop._cond:  # the lock wait() and clear() hold for a few bytecodes
            handler(signal.SIGTERM, None)
            returned.set()

    main = threading.Thread(target=interrupted_main_thread, daemon=True)
    main.start()
    assert returned.wait(5), "the handler waited on the lock its own thread held"
    assert stop.wait(5)
