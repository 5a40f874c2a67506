"""The records of closed rounds and evaluations read back from a state file someone else changed:
each must still be the JSON of a RoundRecord (records.py) or an EvalRecord (evaluation.py), or
round_records / evaluation_records raise StoreCorrupt naming the file, table, row and field
(coordinator/record_rows.py). They used to hand on whatever json.loads made of it: a
JSONDecodeError or TypeError for a row that is no JSON, and a NaN, a text count or a record
with fields missing as if fedge had written it."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import ServerState
from tests.coordinator.test_store import _eval_record, _record, _round

ROUND, EVAL = _record(1), _eval_record(1)


def _store(path) -> RoundStore:
    store = RoundStore(path)
    store.bind("model-x", "fedavg")
    store.save_initial_state(ServerState(0, {"w": np.zeros(3, np.float32)}, {}))
    store.open_round(_round(1, 0))
    store.commit_round(1, ServerState(1, {"w": np.ones(3, np.float32)}, {}), ROUND, 1100.0)
    store.add_evaluation(1, EVAL)
    return store


def test_the_records_fedge_wrote_read_back_as_written(tmp_path):
    store = _store(tmp_path / "state.db")
    assert store.round_records() == [ROUND] and store.evaluation_records() == [EVAL]
    with sqlite3.connect(tmp_path / "state.db") as db:  # a record from before train_loss: a default, not damage
        db.execute("UPDATE rounds SET record = json_remove(record, '$.train_loss')")
    assert store.round_records() == [{k: v for k, v in ROUND.items() if k != "train_loss"}]


def _nan(field: str):
    return lambda text: json.dumps({**json.loads(text), field: float("nan")})


# (table, new record: SQL or a function of the old text, what the error says after "not a JSON <Record>")
CASES = [
    ("rounds", "'not json'", ""),
    ("rounds", "NULL", ""),
    ("rounds", "'[1, 2]'", ""),
    ("rounds", "json_set(record, '$.reports', -3)", r" \(reports: an integer >= 0, not -3\)"),
    ("rounds", "json_set(record, '$.reports', 'many')", r" \(reports: an integer >= 0, not 'many'\)"),
    ("rounds", "json_set(record, '$.committed', 2)", r" \(committed: true or false, not 2\)"),
    ("rounds", _nan("seconds"), r" \(seconds: a finite number, not nan\)"),
    ("rounds", _nan("train_loss"), r" \(train_loss: a finite number or null, not nan\)"),
    ("rounds", "json_set(record, '$.declines', json('{\"c\": 3}'))",
     r" \(declines: a JSON object, each value text, not"),
    ("rounds", "json_remove(record, '$.why')", r" \(its why is missing\)"),
    ("rounds", "json_set(record, '$.stranger', 1)", r" \(it has no field 'stranger'\)"),
    ("evaluations", "'{not json'", ""),
    ("evaluations", "json_set(record, '$.loss_global', 'low')", r" \(loss_global: a finite number or null"),
    ("evaluations", _nan("accuracy_global"), r" \(accuracy_global: a finite number or null, not nan\)"),
    ("evaluations", "json_set(record, '$.declined', json('{\"busy\": -1}'))",
     r" \(declined: a JSON object, each value an integer >= 0, not"),
    ("evaluations", "json_set(record, '$.per_device', json('{}'))", r" \(it has no field 'per_device'\)"),
    ("evaluations", "json_remove(record, '$.asked')", r" \(its asked is missing\)"),
]


@pytest.mark.parametrize("table, edit, said", CASES, ids=[f"{t}:{e if isinstance(e, str) else 'nan'}:{s[-20:]}"
                                                           for t, e, s in CASES])
def test_a_record_fedge_never_wrote_is_named(tmp_path, table, edit, said):
    path = tmp_path / "state.db"
    store = _store(path)
    with sqlite3.connect(path) as db:
        if callable(edit):
            (text,) = db.execute(f"SELECT record FROM {table}").fetchone()
            db.execute(f"UPDATE {table} SET record = ?", (edit(text),))
        else:
            db.execute(f"UPDATE {table} SET record = {edit}")
    read = store.round_records if table == "rounds" else store.evaluation_records
    row, kind = ("round 1", "RoundRecord") if table == "rounds" else ("evaluation 1", "EvalRecord")
    with pytest.raises(StoreCorrupt, match=f"{path}: {table}\\.record holds .* \\({row}\\), not a JSON {kind}{said}"):
        read()
    store.close()
