"""PostgresStore reads its rows with RoundStore's code (sql_store.py), so a row fedge never wrote
in the PostgreSQL database is StoreCorrupt naming the (redacted) DSN, table, column and row, as
for a SQLite file (test_store_rows_damaged.py). Its typed columns refuse text in a number, but
not a JSON column that is no JSON, a negative count, or a round that is no round."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from fedge.coordinator.store import RoundStore, StoredDecline, StoredDevice, StoredUpdate
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


class _Statements:
    """The store's connection, counting the statements sent (round trips to the server)."""

    def __init__(self, db):
        self.db, self.sent = db, []

    def execute(self, sql: str, params: tuple = ()):
        self.sent.append(sql.split(" ", 1)[0])
        return self.db.execute(sql, params)

    def __getattr__(self, name):
        return getattr(self.db, name)


def test_save_devices_upserts_a_batch_in_one_statement_as_sqlite_writes_it_row_by_row(postgres_dsn, tmp_path):
    """The registry's refresh flush (registry.REFRESH_BATCH_MAX rows): SqlStore's loop sent one
    INSERT a row (50,000 rows: 8.5-11.6 s on a local server, pg_store.py); PostgresStore sends one unnest INSERT.
    Oracle: SQLite's RoundStore (SqlStore's row-by-row statements) given the same batches."""
    rng = np.random.default_rng(3)
    first = [StoredDevice(f"d{i}", 1000.0 + i, bool(i % 2), "" if i % 2 else "battery_low", i) for i in range(40)]
    second = [StoredDevice(f"d{i}", 2000.0 + float(rng.uniform()), bool(i % 3), f"r{i}", 2**40 + i)
              for i in map(int, rng.permutation(60))]  # 20 new, 40 updated, in no order
    second += [StoredDevice("d5", 3000.0, True, "last one wins", 5)]  # an id twice in a batch, as SqlStore allows
    pg, lite = _store(postgres_dsn), RoundStore(tmp_path / "state.db")
    lite.bind("model-x", "fedavg")
    for batch in (first, second, []):
        lite.save_devices(batch)
        pg._db = spy = _Statements(pg._db)
        pg.save_devices(batch)
        pg._db = spy.db
        assert [s for s in spy.sent if s == "INSERT"] == (["INSERT"] if batch else [])
    rows = pg.load_devices()
    assert rows == sorted([*lite.load_devices(), StoredDevice("a", 1000.0, True, "", 7)], key=lambda d: d.device_id)
    assert {d.device_id: d for d in rows}["d5"] == StoredDevice("d5", 3000.0, True, "last one wins", 5)
    pg.close()
    lite.close()


def test_refresh_began_is_written_once_and_read_back(postgres_dsn):
    store = _store(postgres_dsn)
    assert store.refresh_began(1_800_000_000.5) == 1_800_000_000.5
    assert store.refresh_began(1_900_000_000.0) == 1_800_000_000.5  # a later start keeps the first time
    store.close()
    again = PostgresStore(postgres_dsn)
    assert again.refresh_began(2_000_000_000.0) == 1_800_000_000.5
    again.close()
