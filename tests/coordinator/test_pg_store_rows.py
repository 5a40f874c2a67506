"""PostgresStore reads its rows with RoundStore's code (sql_store.py), so a row fedge never wrote
in the PostgreSQL database is StoreCorrupt naming the (redacted) DSN, table, column and row, as
for a SQLite file (test_store_rows_damaged.py). Its typed columns refuse text in a number, but
not a JSON column that is no JSON, a negative count, or a round that is no round."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from fedge.coordinator.store import StoredDecline, StoredDevice, StoredUpdate
from fedge.coordinator.strategies import ServerState
from tests.coordinator.test_store import _round
from tests.pg_server import import_psycopg

psycopg = import_psycopg()
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402

READ = {"models": "load_state", "tensors": "load_state", "rounds": "load_open_round", "updates": "load_open_round",
        "declines": "load_open_round", "devices": "load_devices"}
CASES = [
    ("models", "extra_groups", "'7'"),
    ("tensors", "dtype", "'nonsense'"),
    ("tensors", "shape", "'[2.5]'"),
    ("rounds", "selected", "'not json'"),
    ("rounds", "tasks", "'[]'"),
    ("rounds", "quorum", "3"),
    ("updates", "num_examples", "-3"),
    ("updates", "device_id", "'stranger'"),
    ("declines", "device_id", "'stranger'"),
    ("devices", "eligible", "2"),
    ("devices", "num_examples", "-5"),
]


def _store(dsn: str) -> PostgresStore:
    store = PostgresStore(dsn)
    store.bind("model-x", "fedavg")
    store.save_initial_state(ServerState(0, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, {"momentum": {}}))
    store.open_round(_round(1, 0))
    store.add_update(1, StoredUpdate(0, "a", "u-a", "d" * 64, 7, b"payload-a"))
    store.add_decline(1, StoredDecline(1, "b", "battery_low"))
    store.save_device(StoredDevice("a", 1000.0, True, "", 7))
    return store


@pytest.mark.parametrize("table, column, value", CASES, ids=[f"{t}.{c}={v}" for t, c, v in CASES])
def test_a_postgres_value_fedge_never_writes_is_named(postgres_dsn, table, column, value):
    store = _store(postgres_dsn)
    getattr(store, READ[table])()  # the oracle: the untouched rows read back
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert conn.execute(f"UPDATE {table} SET {column} = {value}").rowcount == 1
    with pytest.raises(StoreCorrupt, match=f"{store.path}: {table}\\.{column} holds"):
        getattr(store, READ[table])()
    store.close()
