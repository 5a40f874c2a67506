"""A scripted run of Store operations, and the store's observable state after each, for the
kill -9 conformance test (test_store_kill9.py).

The script covers every write method: seeding, devices, rounds opened, filled, committed
(with a privacy charge), charged while open, abandoned, a refused double commit and a refused version skip,
an evaluation, and enough rounds that keep_versions, keep_key_rounds and keep_rounds prune.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from fedge.coordinator.memory_store import MemoryStore
from fedge.coordinator.store import RoundStore, Store, StoredDecline, StoredDevice, StoredRound, StoredUpdate
from fedge.coordinator.strategies import ServerState
from tests.coordinator.test_store import _eval_record, _record

KEEP_VERSIONS = 2
KEEP_KEY_ROUNDS = 2
KEEP_ROUNDS = 2  # commits 3 and 4 delete rounds 1 and 2's rows


def _state(version: int) -> ServerState:
    rng = np.random.default_rng(version)
    return ServerState(version, {"w": rng.normal(size=(4, 3)).astype(np.float32), "b": np.float32(version)},
                       {"momentum": {"w": rng.normal(size=(4, 3))}})


def _round(round_id: int, version: int) -> StoredRound:
    devices = ("a", "b", "c")
    return StoredRound(round_id, version, devices, {d: f"t{round_id}{d}" for d in devices}, 2, 1,
                       100.0 * round_id, 100.0 * round_id + 60, privacy={"z": 1.0} if round_id == 1 else None)


def _update(seq: int, device: str, round_id: int) -> StoredUpdate:
    return StoredUpdate(seq, device, f"u{round_id}", f"{device}{round_id}" * 8, 3 + seq,
                        bytes([seq, round_id]) * 50, b"ctl" if device == "b" else b"", 0.5 * seq or None)


def _refused(write: Callable[[], None]) -> None:
    with pytest.raises(ValueError):
        write()


OPS: tuple[tuple[str, Callable[[Store], None]], ...] = (
    ("bind", lambda s: s.bind("model-x", "fedavg")),
    ("seed", lambda s: s.save_initial_state(_state(0))),
    ("device a", lambda s: s.save_device(StoredDevice("a", 1.0, True, "", 10))),
    ("open 1", lambda s: s.open_round(_round(1, 0))),
    ("update 1a", lambda s: s.add_update(1, _update(0, "a", 1))),
    ("decline 1c", lambda s: s.add_decline(1, StoredDecline(1, "c", "battery_low"))),
    ("update 1b", lambda s: s.add_update(1, _update(2, "b", 1))),
    ("refused skip", lambda s: _refused(lambda: s.commit_round(1, _state(2), {}, 0.0))),
    ("commit 1", lambda s: s.commit_round(1, _state(1), _record(1), 170.0, charge={"round": 1})),
    ("refused double commit", lambda s: _refused(lambda: s.commit_round(1, _state(2), {}, 0.0))),
    ("open 2", lambda s: s.open_round(_round(2, 1))),
    ("update 2a", lambda s: s.add_update(2, _update(0, "a", 2))),
    ("abandon 2", lambda s: s.abandon_round(2, _record(2), 270.0, charge={"round": 2})),
    ("device b", lambda s: s.save_device(StoredDevice("b", 2.0, False, "offline", 7))),
    ("open 3", lambda s: s.open_round(_round(3, 1))),
    ("update 3b", lambda s: s.add_update(3, _update(0, "b", 3))),
    ("charge 3 open", lambda s: s.charge_round(3, {"round": 3})),  # a secure round's unmasking began
    ("refused double charge", lambda s: _refused(lambda: s.charge_round(3, {"round": 3}))),
    ("refused closed charge", lambda s: _refused(lambda: s.charge_round(2, {"round": 2}))),
    ("commit 3", lambda s: s.commit_round(3, _state(2), _record(3), 370.0)),
    ("evaluation", lambda s: s.add_evaluation(3, _eval_record(3))),
    ("device a again", lambda s: s.save_device(StoredDevice("a", 3.0, False, "battery_low", 11))),
    ("open 4", lambda s: s.open_round(_round(4, 2))),
    ("update 4c", lambda s: s.add_update(4, _update(0, "c", 4))),
    ("commit 4", lambda s: s.commit_round(4, _state(3), _record(4), 470.0)),
)
_KEYS = [(d, r, f"u{r}") for r in range(1, 5) for d in "abc"]


def open_store(kind: str, where: str) -> Store:
    if kind == "sqlite":
        return RoundStore(where, keep_versions=KEEP_VERSIONS, keep_key_rounds=KEEP_KEY_ROUNDS, keep_rounds=KEEP_ROUNDS)
    if kind == "postgres":
        from fedge.coordinator.pg_store import PostgresStore

        return PostgresStore(where, keep_versions=KEEP_VERSIONS, keep_key_rounds=KEEP_KEY_ROUNDS,
                             keep_rounds=KEEP_ROUNDS)
    return MemoryStore(KEEP_KEY_ROUNDS, keep_rounds=KEEP_ROUNDS)


def _arrays(arrays: dict) -> dict:
    return {name: (np.asarray(a).dtype.str, np.asarray(a).shape, np.asarray(a).tobytes()) for name, a in arrays.items()}


def snapshot(store: Store) -> tuple:
    """Everything a coordinator can read back, with tensors as raw bytes. Update keys are probed
    only for closed rounds: that is where the Store contract promises counted_digest."""
    state = store.load_state()
    model = None if state is None else (state.version, _arrays(state.params),
                                        {g: _arrays(a) for g, a in state.extra.items()})
    records = store.round_records()
    closed = {r["round_id"] for r in records if "round_id" in r}
    keys = {k: store.counted_digest(*k) for k in _KEYS if k[1] in closed}
    return (model, store.next_round_id(), store.load_open_round(), records, store.privacy_ledger(), keys,
            store.load_devices(), store.evaluation_records())


def clean_run(store: Store) -> list[tuple]:
    """The snapshots before any operation and after each one."""
    snapshots = [snapshot(store)]
    for _, op in OPS:
        op(store)
        snapshots.append(snapshot(store))
    return snapshots


def child(kind: str, where: str, pipe) -> None:
    """Run OPS, telling the parent ("start", i) before operation i and ("done", i) after it, then
    blocking until it says "go" (or kills us): so the child never gets past the operation the
    parent means to kill it at."""
    store = open_store(kind, where)
    for i, (_, op) in enumerate(OPS):
        pipe.send(("start", i))
        op(store)
        pipe.send(("done", i))
        pipe.recv()
    store.close()
