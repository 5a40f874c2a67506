"""Leadership's fencing at its edges (mutation6-transport): a leader row that is gone fences
every writer, and a leader that asks again keeps its epoch (PostgreSQL, as test_pg_store.py)."""

from __future__ import annotations

import pytest

from tests.coordinator.test_pg_store import _rows, _state
from tests.pg_server import import_psycopg

psycopg = import_psycopg()
from fedge.coordinator.leadership import FencedOut, PostgresLease  # noqa: E402
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402


def test_a_leader_that_asks_again_keeps_its_epoch_and_its_writes(postgres_dsn):
    lease = PostgresLease(postgres_dsn, holder="one")
    assert lease.try_acquire() and lease.epoch == 1
    store = PostgresStore(postgres_dsn, epoch=lease.epoch)
    assert lease.try_acquire() and lease.epoch == 1  # the advisory lock is re-entrant: no second bump
    assert _rows(postgres_dsn, "SELECT epoch FROM leader") == [(1,)]
    store.save_initial_state(_state(0))  # not fenced by its own lease
    lease.check()
    for closeable in (store, lease):
        closeable.close()


def test_a_missing_leader_row_fences_every_write(postgres_dsn):
    lease = PostgresLease(postgres_dsn, holder="one")
    assert lease.try_acquire()
    store = PostgresStore(postgres_dsn, epoch=lease.epoch)
    _rows(postgres_dsn, "DELETE FROM leader RETURNING id")  # an operator's cleanup, a restored backup
    with pytest.raises(FencedOut, match="epoch is None"):
        store.save_initial_state(_state(0))
    with pytest.raises(FencedOut):
        lease.check()
    for closeable in (store, lease):
        closeable.close()
