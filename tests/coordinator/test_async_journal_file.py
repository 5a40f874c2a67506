"""The async journal read back from a state file someone else changed: each value fedge never
writes (a NULL payload, a negative staleness, text where a number goes) stops the restart with
StoreCorrupt naming the file, table and column. They used to surface as a TypeError or a
ValueError from deep in the replay (a traceback, and a service its supervisor restarts for ever),
or not at all until a device answered the task."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from fedge.coordinator.store import RoundStore
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_async_server import _fleet, _send
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


CHANGES = [
    ("async_updates", "payload", "NULL"),
    ("async_updates", "staleness", "-1"),
    ("async_updates", "staleness", "'x'"),
    ("async_updates", "num_examples", "-5"),
    ("async_updates", "seq", "'a'"),
    ("async_updates", "reported_norm", "'big'"),
    ("async_tasks", "deadline_wall", "'soon'"),
    ("async_tasks", "base_version", "'v'"),
]


@pytest.mark.parametrize("table, column, value", CHANGES, ids=[f"{t}.{c}={v}" for t, c, v in CHANGES])
def test_a_journal_value_fedge_never_writes_stops_the_restart_by_name(model, tmp_path, table, column, value):
    db = tmp_path / "state.db"
    fleet, devs = _fleet(model, tmp_path, 4, store=RoundStore(db))
    _send(fleet, devs[0], random_delta(fleet.coordinator.shapes, np.random.default_rng(5)))
    fleet.restart(store=RoundStore(db))  # the oracle: the untouched file resumes
    assert fleet.coordinator.machine.buffered == 1 and fleet.coordinator.machine.in_flight == 3
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE {table} SET {column} = {value}")
    with pytest.raises(StoreCorrupt, match=f"{db}: {table}.{column} holds"):
        fleet.restart(store=RoundStore(db))
