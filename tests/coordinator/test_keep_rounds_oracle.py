"""keep_rounds on SQLite, PostgreSQL and memory, driven through one seeded sequence and checked
after every close against a plain-Python model of the documented rule (README, state database):

    at the close of round r, with keep_rounds = N > 0, the closed rounds with id <= r - N go, and
    the evaluations of those rounds; never the open round, a charge in the privacy ledger, or the
    update keys of the latest keep_key_rounds rounds.

The model keeps lists and filters them with a comprehension at each close (not the stores'
walks in seq or insertion order). The sequence mixes commits and abandons, rounds without an
evaluation, and an evaluation that finishes only after the next round closed (the coordinator
closes an evaluation in flight when the next commit comes: evaluation.py after_commit); the SQL
stores are closed and reopened halfway.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from fedge.coordinator.memory_store import MemoryStore
from fedge.coordinator.store import RoundStore, StoredRound, StoredUpdate
from fedge.coordinator.strategies import ServerState
from tests.coordinator.test_store import _eval_record, _record

KEYS = 8  # keep_key_rounds of every store here


def _opener(kind: str, request, tmp_path, keep: int):
    """A function that opens (or, for memory, returns again) the one store of this test."""
    if kind == "memory":
        store = MemoryStore(KEYS, keep_rounds=keep)
        return lambda: store
    if kind == "sqlite":
        return lambda: RoundStore(tmp_path / "state.db", durable=False, keep_key_rounds=KEYS, keep_rounds=keep)
    from fedge.coordinator.pg_store import PostgresStore

    dsn = request.getfixturevalue("postgres_dsn")
    return lambda: PostgresStore(dsn, keep_key_rounds=KEYS, keep_rounds=keep)


def _state(version: int) -> ServerState:
    return ServerState(version, {"w": np.full(3, float(version), np.float32)})


class Model:
    """The rule, written as plainly as it is documented."""

    def __init__(self, keep: int):
        self.keep, self.closed, self.evaluations, self.ledger, self.keys = keep, [], [], [], []

    def close(self, round_id: int, charged: bool) -> None:
        self.closed.append(round_id)
        self.ledger += [round_id] if charged else []
        self.keys.append(round_id)
        if self.keep:
            cutoff = round_id - self.keep
            self.closed = [r for r in self.closed if r > cutoff]
            self.evaluations = [r for r in self.evaluations if r > cutoff]
        self.keys = [r for r in self.keys if r > round_id - KEYS]


def _check(store, model: Model, next_id: int) -> None:
    assert [r["round_id"] for r in store.round_records()] == model.closed
    assert store.evaluation_records() == [_eval_record(r) for r in model.evaluations]
    assert store.privacy_ledger() == [{"round": r} for r in model.ledger]
    assert [r for r in range(1, next_id) if store.counted_digest("a", r, "u") == f"d{r}"] == model.keys
    assert store.next_round_id() == next_id and store.load_open_round() is None


@pytest.mark.parametrize("keep", [1, 2, 5, 0, 2**63 - 1], ids=["1", "2", "5", "0", "int64_max"])
@pytest.mark.parametrize("kind", ["sqlite", "postgres", "memory"])
def test_three_stores_keep_what_the_plain_rule_keeps(kind, keep, request, tmp_path):
    rng, model, seen = random.Random(4), Model(keep), set()  # seen: the cases the sequence ran
    reopen = _opener(kind, request, tmp_path, keep)
    store = reopen()
    store.bind("m", "fedavg")
    store.save_initial_state(_state(0))
    version, late = 0, None  # late: a committed round whose evaluation finishes after the next close
    for round_id in range(1, 25):
        store.open_round(StoredRound(round_id, version, ("a",), {"a": f"t{round_id}"}, 1, 1, 0.0, 60.0))
        store.add_update(round_id, StoredUpdate(0, "a", "u", f"d{round_id}", 1, b"p"))
        charged = rng.random() < 0.7
        charge = {"round": round_id} if charged else None
        committed = rng.random() < 0.7
        if committed:
            version += 1
            store.commit_round(round_id, _state(version), _record(round_id), 0.0, charge=charge)
        else:  # an abandoned round is never evaluated
            store.abandon_round(round_id, _record(round_id), 0.0, charge=charge)
        model.close(round_id, charged)
        seen.add("committed" if committed else "abandoned")
        was_late, late = late, None
        if was_late is not None:  # the evaluation of the round before, finished after this close
            store.add_evaluation(was_late, _eval_record(was_late))
            model.evaluations.append(was_late)
        if committed and (draw := rng.random()) < 0.75:
            if draw < 0.5:  # this round's evaluation finishes before the next close
                store.add_evaluation(round_id, _eval_record(round_id))
                model.evaluations.append(round_id)
                seen.add("late, then in time" if was_late is not None else "in time")
            else:
                late = round_id
        elif committed:
            seen.add("committed, not evaluated")
        _check(store, model, round_id + 1)
        if round_id == 12 and kind != "memory":
            store.close()
            store = reopen()
            _check(store, model, 13)
    assert model.closed == list(range(max(1, 25 - keep) if keep else 1, 25))  # the model itself
    assert seen == {"committed", "abandoned", "in time", "late, then in time", "committed, not evaluated"}
    store.close()
