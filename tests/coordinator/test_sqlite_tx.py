"""One SQLite write transaction (coordinator/sqlite_tx.py), against a second connection to the
same WAL file as the store and the async journal open it: the write lock is held from BEGIN
(a second writer is refused at once, before the first has written anything), and an exception
inside rolls back, leaving the connection ready for the next transaction."""

from __future__ import annotations

import sqlite3

import pytest

from fedge.coordinator.sqlite_tx import immediate_transaction


def _connect(path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, timeout=0)
    db.execute("PRAGMA journal_mode=WAL")
    return db


def test_the_write_lock_is_taken_at_begin_not_at_the_first_write(tmp_path):
    a, b = _connect(tmp_path / "state.db"), _connect(tmp_path / "state.db")
    a.execute("CREATE TABLE t (x INTEGER)")
    with immediate_transaction(a, guard=None):
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            b.execute("BEGIN IMMEDIATE")
    b.execute("BEGIN IMMEDIATE")  # free again after the COMMIT
    b.execute("ROLLBACK")


def test_an_exception_inside_rolls_back_and_the_next_transaction_commits(tmp_path):
    a, b = _connect(tmp_path / "state.db"), _connect(tmp_path / "state.db")
    a.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(KeyError):
        with immediate_transaction(a, guard=None) as db:
            db.execute("INSERT INTO t VALUES (1)")
            raise KeyError("a failure between two writes")
    assert not a.in_transaction
    with immediate_transaction(a, guard=None) as db:
        db.execute("INSERT INTO t VALUES (2)")
    assert b.execute("SELECT x FROM t").fetchall() == [(2,)]


def test_the_guard_runs_before_begin_and_what_it_raises_writes_nothing(tmp_path):
    a, b = _connect(tmp_path / "state.db"), _connect(tmp_path / "state.db")
    a.execute("CREATE TABLE t (x INTEGER)")

    def gone():
        assert not a.in_transaction  # called before BEGIN: no lock taken, nothing to roll back
        raise LookupError("the file is gone")

    with pytest.raises(LookupError):
        with immediate_transaction(a, guard=gone) as db:
            db.execute("INSERT INTO t VALUES (1)")
    assert not a.in_transaction and b.execute("SELECT x FROM t").fetchall() == []
