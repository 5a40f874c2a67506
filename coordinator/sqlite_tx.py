"""One SQLite write transaction, shared by the round store and the async journal."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import contextmanager


@contextmanager
def immediate_transaction(db: sqlite3.Connection, *, guard: Callable[[], None] | None):
    """BEGIN IMMEDIATE (take the write lock now, not at the first write), COMMIT, or ROLLBACK on any exception.

    guard: called before BEGIN; what it raises stops the write before anything is written. A
    connection to the state_db passes its state_file.StateFileGuard (StoreGone once the file was
    deleted or replaced under it), so no writer of that file can skip the check; None only for
    a database no deletion can lose. Keyword and required: every caller says which."""
    if guard is not None:
        guard()
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
