"""RoundStore: bit-exact state round trips, one transaction per step, and a writer killed with -9.

Oracle for "bit-exact": the raw bytes (and dtype, shape) of every array read back equal the
bytes written, including NaN payloads, -0.0 and subnormals that a float compare would blur.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from fedge.coordinator.evaluation import EvalRecord
from fedge.coordinator.records import RoundRecord
from fedge.coordinator.store import RoundStore, StoredDecline, StoredDevice, StoredRound, StoredUpdate
from fedge.coordinator.strategies import ServerState
from fedge.edge_runtime.kernel.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def _odd_floats(rng, shape, dtype=np.float32):
    x = rng.normal(size=shape).astype(dtype)
    flat = x.reshape(-1)
    specials = np.array([-0.0, np.nan, np.inf, -np.inf, np.finfo(dtype).tiny / 4], dtype=dtype)
    flat[: min(flat.size, specials.size)] = specials[: flat.size]
    if flat.size > 1:  # a NaN with a payload: only a byte compare sees it survive
        flat.view(np.uint32 if dtype == np.float32 else np.uint64)[1] |= 0x1
    return x


def _state(version: int, seed: int = 0) -> ServerState:
    rng = np.random.default_rng(seed)
    params = {"fc.lora_a": _odd_floats(rng, (12, 2)), "head.bias": _odd_floats(rng, (3,)),
              "scalar": np.asarray(np.float32(1.5)), "empty": np.zeros((0, 4), np.float32)}
    extra = {"momentum": {"fc.lora_a": _odd_floats(rng, (12, 2), np.float64), "steps": np.arange(5, dtype=np.int64)},
             "control": {}}
    return ServerState(version=version, params=params, extra=extra)


def _assert_same_bits(got: dict, want: dict):
    assert list(got) == list(want) or set(got) == set(want)
    for name, value in want.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        assert got[name].tobytes() == value.tobytes(), name
        assert got[name].flags.writeable, name


def _assert_same_state(got: ServerState, want: ServerState):
    assert got.version == want.version
    _assert_same_bits(got.params, want.params)
    assert set(got.extra) == set(want.extra)
    for grp in want.extra:
        _assert_same_bits(got.extra[grp], want.extra[grp])


def _record(round_id: int) -> dict:
    """A closed round's record as the coordinator stores it (round_records reads back only these)."""
    return asdict(RoundRecord(round_id, True, "quorum", 3, 2, {"c": "battery_low"}, 900, 1800, 3000, 12.5, 0.75))


def _eval_record(round_id: int) -> dict:
    """A finished evaluation's record as the coordinator stores it (less its per-device numbers)."""
    record = asdict(EvalRecord(round_id, 1, 3, 2, {"busy": 1}, 40, 0.5, 0.8, 0, None, None, 100, 300, True))
    del record["per_device"]
    return record


def _round(round_id: int, version: int, devices=("a", "b", "c")) -> StoredRound:
    return StoredRound(round_id, version, tuple(devices), {d: f"task-{round_id}-{d}" for d in devices},
                       target=2, quorum=1, started_wall=1000.0 + round_id, deadline_wall=1600.0 + round_id)


def test_state_round_trip_is_bit_exact_params_extra_and_keys(tmp_path):
    path = tmp_path / "state.db"
    store = RoundStore(path)
    store.bind("model-x", "fedavg")
    assert store.load_state() is None and store.next_round_id() == 1
    initial = _state(0, seed=1)
    store.save_initial_state(initial)
    store.save_initial_state(_state(0, seed=99))  # a second call on a seeded file changes nothing

    store.open_round(_round(1, 0))
    store.add_update(1, StoredUpdate(0, "a", "u-a", "d" * 64, 7, b"payload-a"))
    store.add_decline(1, StoredDecline(1, "c", "battery_low"))
    store.add_update(1, StoredUpdate(2, "b", "u-b", "e" * 64, 9, b"\x00payload-b\xff"))
    committed = _state(1, seed=2)
    store.commit_round(1, committed, _record(1), 1700.0)
    store.close()

    again = RoundStore(path)
    again.bind("model-x", "fedavg")
    _assert_same_state(again.load_state(), committed)
    assert again.next_round_id() == 2 and again.load_open_round() is None
    # The keys of the committed round stay (late duplicates), their payloads are gone.
    assert again.counted_digest("a", 1, "u-a") == "d" * 64
    assert again.counted_digest("b", 1, "u-b") == "e" * 64
    assert again.counted_digest("a", 1, "other") is None
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM updates WHERE payload IS NOT NULL").fetchone() == (0,)
    assert db.execute("SELECT COUNT(*) FROM declines").fetchone() == (0,)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert again.round_records() == [_record(1)]


def test_open_round_comes_back_with_its_events_in_acceptance_order(tmp_path):
    store = RoundStore(tmp_path / "state.db")
    store.save_initial_state(_state(0))
    rnd = _round(1, 0)
    store.open_round(rnd)
    events = [StoredUpdate(0, "b", "u1", "1" * 64, 3, b"first"), StoredDecline(1, "a", "metered_link"),
              StoredUpdate(2, "c", "u9", "2" * 64, 5, b"third")]
    for e in events:
        (store.add_update if isinstance(e, StoredUpdate) else store.add_decline)(1, e)
    back = RoundStore(tmp_path / "state.db").load_open_round()
    assert back == StoredRound(**{**rnd.__dict__, "events": tuple(events)})
    assert store.next_round_id() == 1  # the open round, not a new id


def test_store_refuses_what_would_break_its_invariants(tmp_path):
    store = RoundStore(tmp_path / "state.db")
    store.bind("model-x", "fedavg")
    with pytest.raises(ConfigError, match="model_id"):
        store.bind("model-y", "fedavg")
    with pytest.raises(ConfigError, match="strategy"):
        RoundStore(tmp_path / "state.db").bind("model-x", "fedprox")
    store.save_initial_state(_state(0))
    store.open_round(_round(1, 0))
    with pytest.raises(sqlite3.IntegrityError):  # at most one open round
        store.open_round(_round(2, 0))
    store.add_update(1, StoredUpdate(0, "a", "u", "f" * 64, 1, b"x"))
    with pytest.raises(sqlite3.IntegrityError):  # a key is counted once
        store.add_update(1, StoredUpdate(1, "a", "u", "f" * 64, 1, b"x"))
    with pytest.raises(ValueError, match="version"):  # versions follow one another
        store.commit_round(1, _state(5), {}, 0.0)
    assert store.load_open_round().round_id == 1  # the failed commit left nothing behind
    assert store.load_state().version == 0
    store.abandon_round(1, {"why": "deadline"}, 0.0)
    for attempt in (lambda: store.abandon_round(1, {}, 0.0), lambda: store.commit_round(1, _state(1), {}, 0.0),
                    lambda: store.add_update(1, StoredUpdate(2, "b", "v", "0" * 64, 1, b"y"))):
        with pytest.raises(ValueError, match="not open"):
            attempt()
    assert store.next_round_id() == 2 and store.load_state().version == 0


def test_old_versions_and_old_keys_are_pruned(tmp_path):
    store = RoundStore(tmp_path / "state.db", keep_versions=2, keep_key_rounds=3)
    store.save_initial_state(_state(0))
    for r in range(1, 7):
        store.open_round(_round(r, r - 1))
        store.add_update(r, StoredUpdate(0, "a", f"u{r}", "a" * 64, 1, b"p"))
        store.commit_round(r, _state(r, seed=r), _record(r), float(r))
    db = sqlite3.connect(tmp_path / "state.db")
    assert [v for (v,) in db.execute("SELECT version FROM models ORDER BY version")] == [5, 6]
    assert {v for (v,) in db.execute("SELECT DISTINCT version FROM tensors")} == {5, 6}
    assert [r for (r,) in db.execute("SELECT round_id FROM updates ORDER BY round_id")] == [4, 5, 6]
    _assert_same_state(store.load_state(), _state(6, seed=6))


def _count(path, sql: str) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r for (r,) in db.execute(sql)]
    finally:
        db.close()


def test_keep_rounds_prunes_closed_rounds_and_a_reopened_store_resumes(tmp_path):
    """N + 5 rounds with keep_rounds = N, the last left open; reopened, it resumes; SQL counts are the oracle."""
    path, n = tmp_path / "state.db", 4
    store = RoundStore(path, keep_rounds=n)
    store.save_initial_state(_state(0))
    for r in range(1, n + 6):
        store.open_round(_round(r, r - 1))
        store.add_update(r, StoredUpdate(0, "a", f"u{r}", "a" * 64, 1, b"p"))
        if r <= n + 4:
            store.commit_round(r, _state(r), _record(r), float(r), charge={"round": r})
            store.add_evaluation(r, _eval_record(r))
    store.close()
    closed = "SELECT round_id FROM rounds WHERE status <> 'open' ORDER BY round_id"
    assert _count(path, closed) == [5, 6, 7, 8]
    assert _count(path, "SELECT round_id FROM evaluations ORDER BY seq") == [5, 6, 7, 8]
    assert _count(path, "SELECT round_id FROM privacy_ledger ORDER BY round_id") == list(range(1, n + 5))
    assert _count(path, "SELECT DISTINCT round_id FROM updates ORDER BY round_id") == list(range(1, n + 6))
    store = RoundStore(path, keep_rounds=n)
    assert store.next_round_id() == n + 5 and store.load_state().version == n + 4
    assert [e.update_id for e in store.load_open_round().events] == [f"u{n + 5}"]
    store.commit_round(n + 5, _state(n + 5), _record(n + 5), 9.0)
    assert store.next_round_id() == n + 6 and [r["round_id"] for r in store.round_records()] == [6, 7, 8, 9]
    store.close()
    assert _count(path, closed) == [6, 7, 8, 9] and _count(path, "SELECT count(*) FROM evaluations") == [3]


def test_keep_rounds_prunes_in_the_closing_transaction(tmp_path):
    """A commit refused after the prune ran (a version that does not follow) rolls the prune back
    with it; a smaller keep_rounds at a reopen prunes down to it at the next close."""
    path = tmp_path / "state.db"
    store = RoundStore(path)  # keep_rounds = 0: every round kept
    store.save_initial_state(_state(0))
    for r in range(1, 6):
        store.open_round(_round(r, r - 1))
        store.commit_round(r, _state(r), _record(r), float(r))
    store.close()
    store = RoundStore(path, keep_rounds=2)
    store.open_round(_round(6, 5))
    with pytest.raises(ValueError, match="version"):
        store.commit_round(6, _state(9), _record(6), 6.0)
    assert _count(path, "SELECT round_id FROM rounds ORDER BY round_id") == [1, 2, 3, 4, 5, 6]
    assert store.load_open_round().round_id == 6
    store.abandon_round(6, _record(6), 6.0)
    store.close()
    assert _count(path, "SELECT round_id FROM rounds ORDER BY round_id") == [5, 6]


def test_devices_round_trip(tmp_path):
    store = RoundStore(tmp_path / "state.db")
    store.save_device(StoredDevice("b", 5.0, False, "battery_low", 10))
    store.save_device(StoredDevice("a", 4.0, True, "", 20))
    store.save_device(StoredDevice("b", 6.0, True, "", 11))
    assert store.load_devices() == [StoredDevice("a", 4.0, True, "", 20), StoredDevice("b", 6.0, True, "", 11)]


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from coordinator.records import RoundRecord
    from coordinator.store import RoundStore, StoredRound, StoredUpdate
    from coordinator.strategies import ServerState

    def state(v):
        return ServerState(v, {"w": np.full((64, 64), v, np.float32)}, {"m": {"w": np.full(8, -v, np.float64)}})

    store = RoundStore(sys.argv[1])
    store.bind("m", "fedavg")
    store.save_initial_state(state(0))
    v = store.load_state().version
    r = store.next_round_id()
    while True:
        rnd = store.load_open_round()
        if rnd is None:
            store.open_round(StoredRound(r, v, ("a", "b"), {"a": "ta", "b": "tb"}, 2, 1, 0.0, 1.0))
        done = {e.device_id for e in rnd.events} if rnd else set()
        for i, d in enumerate("ab"):
            if d not in done:  # resume a round the last writer left open
                store.add_update(r, StoredUpdate(i, d, f"u{r}", "0" * 64, 1, bytes(4096)))
        v += 1
        store.commit_round(r, state(v), RoundRecord(r, True, "quorum", 2, 2, {}, 0, 0, 0, 1.0).__dict__, 0.0)
        print(v, flush=True)
        r += 1
""")


def test_a_writer_killed_with_sigkill_leaves_a_consistent_file(tmp_path):
    """kill -9 lands at an arbitrary statement; every reopen must see whole rounds only."""
    path = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, env=env,
                                cwd=ROOT)
        seen = 0
        deadline = time.monotonic() + 20
        while seen < 5 + 7 * attempt and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen = int(line)
        time.sleep(0.003 * attempt)  # land somewhere else in the loop each time
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert seen >= 5, "the writer made no progress"

        store = RoundStore(path)
        state = store.load_state()
        v = state.version
        assert v >= seen  # nothing reported as committed was lost
        assert np.array_equal(state.params["w"], np.full((64, 64), v, np.float32))
        assert np.array_equal(state.extra["m"]["w"], np.full(8, -v, np.float64))
        records = store.round_records()
        assert [r["round_id"] for r in records] == list(range(1, len(records) + 1)) and len(records) == v
        open_round = store.load_open_round()
        if open_round is not None:  # a half-filled round is open, never a half-committed one
            assert open_round.round_id == v + 1 and open_round.model_version == v
            assert [e.device_id for e in open_round.events] in ([], ["a"], ["a", "b"])
        store.close()


def test_state_db_never_writes_into_a_database_fedge_did_not_create(tmp_path):
    """state_db pointed at someone else's SQLite file once got fedge's tables and WAL mode added
    to it. Now: refused, the file byte for byte as it was and no -wal/-shm beside it; a text
    file likewise; an empty file (made with touch) and fedge's own database open as before."""
    theirs = tmp_path / "myapp.db"
    db = sqlite3.connect(str(theirs))
    db.execute("CREATE TABLE notes (body TEXT)")
    db.execute("INSERT INTO notes VALUES ('years of work')")
    db.commit()
    db.close()
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    for path in (theirs, text):
        before = path.read_bytes()
        with pytest.raises(ConfigError, match="not a fedge state database"):
            RoundStore(path)
        assert path.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(path.name)) == [path.name]
    empty = tmp_path / "empty.db"
    empty.touch()
    RoundStore(empty).close()
    ours = tmp_path / "state.db"
    RoundStore(ours).close()
    RoundStore(ours).close()  # reopened: fedge's own
    # Killed between WAL mode and the schema (a 4096-byte file with no tables): starts again.
    half = tmp_path / "half.db"
    code = f"import os, sqlite3; sqlite3.connect({str(half)!r}).execute('PRAGMA journal_mode=WAL'); os._exit(9)"
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    assert half.stat().st_size > 0
    RoundStore(half).close()
