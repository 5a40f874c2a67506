"""The Store contract, run against every implementation: SQLite (RoundStore), PostgreSQL
(PostgresStore, on the server tests/pg_server.py starts) and MemoryStore. The same steps must
leave the same observable state, so the coordinator cannot tell them apart. The kill -9 half
of the contract is tests/coordinator/test_store_kill9.py."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.memory_store import MemoryStore
from fedge.coordinator.store import RoundStore, Store, StoredDecline, StoredDevice, StoredRound, StoredUpdate
from fedge.coordinator.strategies import ServerState
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.test_store import _eval_record, _record


def _make(request, tmp_path, **keep) -> Store:
    """A new store of kind request.param, keeping update keys of 8 rounds (and what `keep` says)."""
    if request.param == "postgres":
        from fedge.coordinator.pg_store import PostgresStore

        return PostgresStore(request.getfixturevalue("postgres_dsn"), keep_key_rounds=8, **keep)
    if request.param == "sqlite":
        return RoundStore(tmp_path / "state.db", keep_key_rounds=8, **keep)
    return MemoryStore(8, **keep)


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def store(request, tmp_path) -> Store:
    s = _make(request, tmp_path)
    yield s
    s.close()


@pytest.fixture(params=["sqlite", "postgres", "memory"])
def store_keeping_3(request, tmp_path) -> Store:
    """A store with keep_rounds = 3."""
    s = _make(request, tmp_path, keep_rounds=3)
    yield s
    s.close()


def _state(version: int) -> ServerState:
    return ServerState(version, {"w": np.full((2, 3), float(version), np.float32)})


def _round(round_id: int) -> StoredRound:
    return StoredRound(round_id, round_id - 1, ("a", "b", "c"), {"a": "ta", "b": "tb", "c": "tc"}, 2, 1,
                       100.0, 160.0)


def test_a_round_open_then_committed(store):
    store.bind("m", "fedavg")
    assert store.load_state() is None and store.next_round_id() == 1 and store.load_open_round() is None
    store.save_initial_state(_state(0))
    store.save_initial_state(_state(5))  # only a fresh store is seeded
    assert store.load_state().version == 0
    store.open_round(_round(1))
    assert store.next_round_id() == 1
    store.add_update(1, StoredUpdate(1, "b", "u1", "digest-b", 8, b"payload-b", b"ctl"))
    store.add_decline(1, StoredDecline(0, "c", "battery_low"))
    store.add_update(1, StoredUpdate(2, "a", "u1", "digest-a", 5, b"payload-a"))
    got = store.load_open_round()
    assert got == StoredRound(**{**_round(1).__dict__, "events": (
        StoredDecline(0, "c", "battery_low"), StoredUpdate(1, "b", "u1", "digest-b", 8, b"payload-b", b"ctl"),
        StoredUpdate(2, "a", "u1", "digest-a", 5, b"payload-a"))})
    with pytest.raises(ValueError):
        store.commit_round(1, _state(2), _record(1), 170.0)  # a version that does not follow
    store.commit_round(1, _state(1), _record(1), 170.0)
    loaded = store.load_state()
    assert loaded.version == 1 and loaded.params["w"].tobytes() == _state(1).params["w"].tobytes()
    assert store.load_open_round() is None and store.next_round_id() == 2
    assert store.round_records() == [_record(1)]
    # A late re-publish of a counted update is recognised after its round closed.
    assert store.counted_digest("b", 1, "u1") == "digest-b" and store.counted_digest("b", 1, "u2") is None
    with pytest.raises(ValueError):
        store.commit_round(1, _state(2), {}, 180.0)  # a round closes once
    with pytest.raises(ValueError):
        store.add_update(1, StoredUpdate(3, "c", "u9", "d", 1, b"p"))  # not open


def test_abandoned_rounds_apply_nothing_and_keys_age_out(store):
    store.bind("m", "fedavg")
    store.save_initial_state(_state(0))
    for round_id in range(1, 11):
        store.open_round(_round(round_id))
        store.add_update(round_id, StoredUpdate(0, "a", "u", f"d{round_id}", 1, b"p"))
        store.abandon_round(round_id, _record(round_id), 0.0)
    assert store.load_state().version == 0 and store.next_round_id() == 11
    assert [r["round_id"] for r in store.round_records()] == list(range(1, 11))
    assert store.counted_digest("a", 10, "u") == "d10" and store.counted_digest("a", 3, "u") == "d3"
    assert store.counted_digest("a", 2, "u") is None  # older than the kept 8 rounds


def test_keep_rounds_keeps_the_latest_closed_rounds_and_their_evaluations_and_the_whole_ledger(store_keeping_3):
    store = store_keeping_3
    store.bind("m", "fedavg")
    store.save_initial_state(_state(0))
    version, evaluated = 0, []
    for round_id in range(1, 10):  # every third round abandoned; each closes with a privacy charge
        store.open_round(_round(round_id))
        store.add_update(round_id, StoredUpdate(0, "a", "u", f"d{round_id}", 1, b"p"))
        if round_id % 3:
            version += 1
            store.commit_round(round_id, _state(version), _record(round_id), 0.0, charge={"round": round_id})
            store.add_evaluation(round_id, _eval_record(round_id))  # evaluated after its commit
            evaluated.append(round_id)
        else:
            store.abandon_round(round_id, _record(round_id), 0.0, charge={"round": round_id})
    store.open_round(_round(10))
    store.add_update(10, StoredUpdate(0, "b", "u", "d10", 1, b"p10"))
    # Oracle: the latest 3 closed rounds (7, 8, 9), the evaluations of those, every charge.
    assert [r["round_id"] for r in store.round_records()] == [7, 8, 9]
    assert store.evaluation_records() == [_eval_record(r) for r in evaluated if r >= 7]
    assert store.privacy_ledger() == [{"round": r} for r in range(1, 10)]
    assert store.counted_digest("a", 2, "u") == "d2"  # round 2's row is gone; its key is keep_key_rounds'
    assert store.load_state().version == version and store.next_round_id() == 10
    assert store.load_open_round().events == (StoredUpdate(0, "b", "u", "d10", 1, b"p10"),)
    store.commit_round(10, _state(version + 1), _record(10), 0.0)
    assert [r["round_id"] for r in store.round_records()] == [8, 9, 10] and store.next_round_id() == 11
    assert store.evaluation_records() == [_eval_record(8)]


def test_devices(store):
    store.save_device(StoredDevice("b", 5.0, True, "", 3))
    store.save_device(StoredDevice("a", 6.0, False, "battery_low", 4))
    store.save_device(StoredDevice("b", 7.0, False, "offline", 3))
    assert store.load_devices() == [StoredDevice("a", 6.0, False, "battery_low", 4),
                                    StoredDevice("b", 7.0, False, "offline", 3)]


def test_a_store_holds_one_model_and_strategy(store):
    store.bind("m", "fedavg")
    store.bind("m", "fedavg")
    with pytest.raises(ConfigError):
        store.bind("m", "scaffold")
    with pytest.raises(ConfigError):
        store.bind("other", "fedavg")


def test_a_group_of_updates_is_stored_in_one_call_in_order(store):
    """Group commit (group_commit.py) hands a burst's updates to one add_update."""
    store.bind("m", "fedavg")
    store.save_initial_state(_state(0))
    store.open_round(_round(1))
    burst = [StoredUpdate(seq, d, f"u-{d}", f"digest-{d}", 4 + seq, f"payload-{d}".encode()) for seq, d in
             enumerate("cab")]
    store.add_update(1, *burst)
    assert store.load_open_round().events == tuple(burst)
    store.commit_round(1, _state(1), _record(1), 200.0)
    assert [store.counted_digest(d, 1, f"u-{d}") for d in "abc"] == [f"digest-{d}" for d in "abc"]


def test_a_commit_refused_for_a_second_charge_changes_nothing(store):
    """A round charged before its close (charge_round) that is then committed with a charge again
    is refused, and the refusal leaves the model, the open round and the ledger as they were: the
    SQL stores roll the transaction back; the memory store once set the new model first."""
    store.bind("m", "fedavg")
    store.save_initial_state(_state(0))
    store.open_round(_round(1))
    store.add_update(1, StoredUpdate(1, "b", "u1", "digest-b", 8, b"payload-b"))
    store.charge_round(1, {"round": 1})
    with pytest.raises(ValueError, match="charged already"):
        store.commit_round(1, _state(1), _record(1), 170.0, charge={"round": 1})
    assert store.load_state().version == 0
    assert store.load_open_round() is not None and store.next_round_id() == 1
    assert len(store.privacy_ledger()) == 1 and store.round_records() == []
    store.commit_round(1, _state(1), _record(1), 170.0)  # the round still closes, once
    assert store.load_state().version == 1 and store.round_records() == [_record(1)]
