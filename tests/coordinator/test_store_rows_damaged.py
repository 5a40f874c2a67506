"""The sync store read back from a state file someone else changed (a rotted page, a hand edit,
a restore that mixed two backups): each value fedge never writes in a table the coordinator
reads at start or on resume stops the restart with StoreCorrupt naming the file, table, column
and row (coordinator/store_rows.py). They used to surface as a TypeError, ValueError, KeyError
or MemoryError from deep in the load or the replay (a traceback, and a service its supervisor
restarts for ever), or not at all: a NaN model, a device's "yes" read as eligible, a negative
example count, an update from a device the round never asked, all resumed as if fedge had
written them. The damaged file is left as it is."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from fedge.coordinator.restart import restore_state
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import make_strategy
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Decline
from tests.coordinator.fleet import HYPER, ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


FIRST_TENSOR = "rowid = (SELECT MIN(rowid) FROM tensors)"
FIRST_UPDATE = "seq = (SELECT MIN(seq) FROM updates)"
OPEN = "status = 'open'"
D0 = "device_id = 'd0'"


def _nan(old: bytes) -> bytes:
    return np.full(len(old) // 4, np.nan, np.float32).tobytes()


# (table, column, new value: SQL, or a function of the old one, which rows, what the error says
# if not "<file>: <table>.<column> holds")
CASES = [
    ("models", "extra_groups", "'not json'", "1", None),
    ("models", "extra_groups", "'7'", "1", None),
    ("tensors", "dtype", "'nonsense'", FIRST_TENSOR, None),
    ("tensors", "dtype", "'|O'", FIRST_TENSOR, None),
    ("tensors", "dtype", "'<f8'", FIRST_TENSOR, r"tensors\.data holds '96 bytes' \(version 0, params .*\), not the "
                                                r"\[12, 2\] float64 its shape and dtype say"),
    ("tensors", "shape", "'not json'", FIRST_TENSOR, None),
    ("tensors", "data", "substr(data, 1, 4)", FIRST_TENSOR, None),
    ("tensors", "data", _nan, FIRST_TENSOR, r"tensors of version 0: params .* holds NaN or Inf"),
    ("tensors", "kind", "'other'", FIRST_TENSOR, None),
    ("rounds", "selected", "'not json'", OPEN, None),
    ("rounds", "selected", "'\"d0\"'", OPEN, None),
    ("rounds", "tasks", "'[]'", OPEN, None),
    ("rounds", "privacy", "'{not json'", OPEN, None),
    ("rounds", "target", "'x'", OPEN, None),
    ("rounds", "target", "99", OPEN, None),
    ("rounds", "quorum", "0", OPEN, None),
    ("rounds", "deadline_wall", "'soon'", OPEN, None),
    ("updates", "seq", "'a'", FIRST_UPDATE, None),
    ("updates", "num_examples", "'many'", FIRST_UPDATE, None),
    ("updates", "num_examples", "-3", FIRST_UPDATE, None),
    ("updates", "reported_norm", "'big'", FIRST_UPDATE, None),
    ("updates", "device_id", "'stranger'", FIRST_UPDATE, None),
    ("updates", "log_offset", "-1", FIRST_UPDATE, None),
    ("updates", "log_offset", "'x'", FIRST_UPDATE, None),
    ("updates", "payload_len", "NULL", FIRST_UPDATE, None),
    ("updates", "payload_len", str(2**62), FIRST_UPDATE, r"round-1\.log: \d+ bytes at offset 0 are not there"),
    ("declines", "seq", "'x'", "1", None),
    ("declines", "device_id", "'stranger'", "1", None),
    ("declines", "seq", "(SELECT MIN(seq) FROM updates)", "1", None),
    ("devices", "last_seen_wall", "'yesterday'", D0, None),
    ("devices", "eligible", "'yes'", D0, None),
    ("devices", "num_examples", "-5", D0, None),
    ("devices", "num_examples", "'lots'", D0, None),
]


def _open_round(model, tmp_path, db):
    """Round 1 open on a state file: d0 and d1 reported, d3 declined, d2 has not answered."""
    fleet = make_fleet(model, tmp_path, clients_per_round=3, min_reports=2, over_selection=1.5,
                       store=RoundStore(db))
    devices = {d: ManualDevice(fleet, d, n) for d, n in (("d0", 7), ("d1", 19), ("d2", 4), ("d3", 11))}
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(3)
    for d in ("d0", "d1"):
        devices[d].send(encode_message(devices[d].update(random_delta(shapes, rng), update_id=f"u-{d}")))
    task = devices["d3"].task()
    devices["d3"].send(encode_message(Decline("d3", task.round_id, task.task_id, "battery_low")))
    fleet.drain()
    return fleet


def _damage(db, table, column, value, where) -> None:
    with sqlite3.connect(db) as conn:
        if callable(value):
            for rowid, old in conn.execute(f"SELECT rowid, {column} FROM {table} WHERE {where}").fetchall():
                conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?", (value(old), rowid))
        else:
            assert conn.execute(f"UPDATE {table} SET {column} = {value} WHERE {where}").rowcount >= 1
    conn.close()


def _read(db, table, column) -> list:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT rowid, {column} FROM {table} ORDER BY rowid").fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("table, column, value, where, said", CASES,
                         ids=[f"{t}.{c}={getattr(v, '__name__', v)}" for t, c, v, _, _ in CASES])
def test_a_store_value_fedge_never_writes_stops_the_restart_by_name(model, tmp_path, table, column, value, where,
                                                                    said):
    db = tmp_path / "state.db"
    fleet = _open_round(model, tmp_path, db)
    fleet.restart(store=RoundStore(db))  # the oracle: the untouched file resumes the round
    c = fleet.coordinator
    assert c.round is not None and len(c.round.machine.reported) == 2 and set(c.round.machine.declined) == {"d3"}
    assert len(c.registry) == 4 and c.registry.eligible == 4
    _damage(db, table, column, value, where)
    damaged = _read(db, table, column)
    with pytest.raises(StoreCorrupt, match=said or f"{db}: {table}\\.{column} holds"):
        fleet.restart(store=RoundStore(db))
    assert _read(db, table, column) == damaged  # left as it was, for the operator


def _reversed(shape: str) -> str:
    """Another shape of as many values: the dims reversed (a 2-D tensor)."""
    return json.dumps(json.loads(shape)[::-1])


# (strategy, column, new value or None to delete the row, what the error says): the strategy's
# state (extra) must still be the arrays its init made, or the first commit after the restart
# stops the loop (KeyError, a broadcast ValueError), or a NaN is taken as the state.
EXTRA = [
    ("fedavgm", "data", None, "extra momentum '.*' is missing"),
    ("fedadam", "shape", _reversed, r"extra [mv] '.*' is float32 \(2, 12\), not float32 \(12, 2\)"),
    ("scaffold", "data", _nan, "extra control '.*' holds NaN or Inf"),
]


@pytest.mark.parametrize("strategy, column, value, said", EXTRA, ids=[f"{s}-{c}" for s, c, _, _ in EXTRA])
def test_a_strategy_state_fedge_never_wrote_stops_the_start_by_name(model, tmp_path, strategy, column, value, said):
    _, manifest, runtime = model
    initial = make_strategy(strategy, HYPER).init(runtime.initial("shared"))
    shapes = {p.name: p.shape for p in manifest.by_role("shared")}
    db = tmp_path / "state.db"
    for _ in range(2):  # seeds the file, then reads it back: the oracle, the untouched state loads bit for bit
        store = RoundStore(db)
        loaded = restore_state(store, manifest.model_id, strategy, initial, shapes)
        store.close()
    assert {g: {n: a.tobytes() for n, a in arrays.items()} for g, arrays in loaded.extra.items()} == \
        {g: {n: a.tobytes() for n, a in arrays.items()} for g, arrays in initial.extra.items()}
    where = "kind = 'extra' AND shape LIKE '[%,%]'"
    if value is None:
        _delete_first(db, where)
    else:
        _damage(db, "tensors", column, value, f"rowid = (SELECT MIN(rowid) FROM tensors WHERE {where})")
    with pytest.raises(StoreCorrupt, match=f"{db}: tensors of version 0: {said}"):
        restore_state(RoundStore(db), manifest.model_id, strategy, initial, shapes)


def _delete_first(db, where: str) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"DELETE FROM tensors WHERE rowid = (SELECT MIN(rowid) FROM tensors WHERE {where})")
    conn.close()


@pytest.mark.parametrize("target, quorum", [(0, 0), (2, 0)])
def test_a_target_or_quorum_of_0_is_only_a_noise_only_round(model, tmp_path, target, quorum):
    """Target and quorum 0 are what an empty Poisson draw writes (noise_round.py: no device
    selected, a privacy plan); without its plan, or with only one of them 0, fedge wrote no such row."""
    db = tmp_path / "state.db"
    _open_round(model, tmp_path, db)
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE rounds SET selected = '[]', tasks = '{{}}', target = {target}, quorum = {quorum}, "
                     f"privacy = NULL WHERE {OPEN}")
    conn.close()
    with pytest.raises(StoreCorrupt, match=r"rounds\.(target|quorum) holds 0 \(open round 1\), not an integer > 0 "
                                           r"\(0 and 0 only in a noise-only round"):
        RoundStore(db).load_open_round()
