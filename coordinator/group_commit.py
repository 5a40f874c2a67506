"""Group commit: the accepted updates of a burst of messages are stored in one transaction,
and their Acks leave after it.

A store write per update (one SQLite transaction, one fsync, each releasing the GIL to a busy
MQTT thread) was 70% of the coordinator's time draining a backlog (`fedge bench ingest`). The
loop handles messages in bursts (up to 500 queued ones, loop.py); inside `burst()` this store
keeps each accepted update in memory and writes them all with one `add_update(round, *updates)`
when the burst ends, or earlier, before any other store call (so order and every read stay as
they were). Every Ack (Outbound.ack goes through `defer`) is held while updates wait, until
they are written.

What the coordinator promises is unchanged: an update is durable before its Ack. A `kill -9`
mid-burst loses only updates that were never acked, which their devices send again (store.py
walks the crash points). The in-memory round counts an update as it is accepted, before the
write, so a write that fails leaves memory ahead of the store: that is not survivable in place,
and GroupCommitFailed stops the coordinator (loop.py lets it through), whose restart resumes
from what the store holds, as after a crash. Outside a burst (the simulator, tests, anything
calling pump() alone) each update is written and acked at once, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

from .errors import GroupCommitFailed, StoreGone
from .store import Store, StoredUpdate


class GroupCommit:
    """A Store (any) with bursts. Everything but add_update and defer goes to the store, after
    the burst's waiting updates are written."""

    def __init__(self, store: Store):
        self.store = store
        self._bursting = False
        self._round_id: int | None = None
        self._updates: list[StoredUpdate] = []
        self._acks: list[Callable[[], None]] = []
        self.bursts = 0  # transactions that wrote more than one update (for tests and the bench)

    def __getattr__(self, name: str):
        value = getattr(self.store, name)
        if not callable(value):
            return value

        def after_flush(*args, **kwargs):
            self.flush()
            return value(*args, **kwargs)

        return after_flush

    def add_update(self, round_id: int, *updates: StoredUpdate) -> None:
        if not self._bursting:
            self.store.add_update(round_id, *updates)
            return
        if self._round_id is not None and self._round_id != round_id:
            self.flush()
        self._round_id = round_id
        self._updates.extend(updates)

    def defer(self, send: Callable[[], None]) -> None:
        """Send now, or after the waiting updates are written (an Ack must not overtake them)."""
        if self._updates:
            self._acks.append(send)
        else:
            send()

    @contextmanager
    def burst(self):
        """Updates accepted inside are written together at the end (or before any other store call)."""
        if self._bursting:  # nested: the outer burst writes
            yield self
            return
        self._bursting = True
        try:
            yield self
        finally:
            self._bursting = False
            self.flush()

    def flush(self) -> None:
        """Write the waiting updates in one transaction, then send the Acks held for them."""
        if not self._updates:
            return
        updates, acks, round_id = self._updates, self._acks, self._round_id
        self._updates, self._acks, self._round_id = [], [], None
        try:
            self.store.add_update(round_id, *updates)
        except StoreGone:  # not restartable: a restart would begin afresh (state_file.py)
            raise
        except Exception as exc:
            raise GroupCommitFailed(f"{len(updates)} accepted updates of round {round_id} could not be stored: "
                                    f"{type(exc).__name__}: {exc}; restart to resume from the store") from exc
        self.bursts += len(updates) > 1
        for send in acks:
            send()
