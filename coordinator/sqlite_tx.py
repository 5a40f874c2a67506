"""One SQLite write transaction, shared by the round store and the async journal."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager


@contextmanager
def immediate_transaction(db: sqlite3.Connection):
    """BEGIN IMMEDIATE (take the write lock now, not at the first write), COMMIT, or ROLLBACK on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
