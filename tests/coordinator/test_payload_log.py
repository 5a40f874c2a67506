"""The open round's payloads in the payload log beside the SQLite store (coordinator/payload_log.py).

Oracles: the bytes handed to add_update (what comes back must be them, byte for byte), the
SQLite file read directly (no payload bytes in it), and the folder's listing.
"""

from __future__ import annotations

import os
import sqlite3

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from fedge.coordinator.payload_log import MARKER, PayloadLog
from fedge.coordinator.store import RoundStore, StoredRound, StoredUpdate
from fedge.coordinator.strategies import ServerState
from fedge.edge_runtime.kernel.errors import ConfigError


def _round(round_id: int) -> StoredRound:
    return StoredRound(round_id, round_id - 1, ("a", "b", "c"), {"a": "ta", "b": "tb", "c": "tc"}, 3, 1, 1000.0, 1600.0)


def _update(seq: int, device: str, size: int = 5000, control: bytes = b"") -> StoredUpdate:
    return StoredUpdate(seq, device, f"u-{device}", f"{device}" * 64, 10 + seq, os.urandom(size), control, 0.5)


def _events(store: RoundStore) -> list[tuple]:
    return [(e.device_id, e.payload, e.control, e.num_examples, e.reported_norm)
            for e in store.load_open_round().events]


def _want(*updates: StoredUpdate) -> list[tuple]:
    return [(u.device_id, u.payload, u.control, u.num_examples, u.reported_norm) for u in updates]


def test_payloads_live_in_the_round_file_not_in_sqlite_and_come_back_byte_exact(tmp_path):
    store = RoundStore(tmp_path / "s.db")
    assert not (tmp_path / "s.db.payloads").exists()  # nothing made before the first update
    store.open_round(_round(1))
    first, second, third = _update(0, "a", control=b"ctl" * 100), _update(1, "b"), _update(2, "c", 0)
    store.add_update(1, first, second)
    store.add_update(1, third)
    assert _events(store) == _want(first, second, third)
    log = tmp_path / "s.db.payloads" / "round-1.log"
    assert log.read_bytes() == first.payload + first.control + second.payload + third.payload
    assert sqlite3.connect(tmp_path / "s.db").execute(
        "SELECT COUNT(*) FROM updates WHERE payload IS NOT NULL OR control IS NOT NULL").fetchone() == (0,)
    store.close()
    assert _events(RoundStore(tmp_path / "s.db")) == _want(first, second, third)  # after a restart too


@pytest.mark.parametrize("close", ["commit", "abandon"])
def test_closing_a_round_deletes_its_file_and_a_reopen_sweeps_a_leftover(tmp_path, close):
    store = RoundStore(tmp_path / "s.db")
    store.save_initial_state(ServerState(0, {"w": np.zeros(2, np.float32)}, {}))
    store.open_round(_round(1))
    store.add_update(1, _update(0, "a"))
    folder = tmp_path / "s.db.payloads"
    if close == "commit":
        store.commit_round(1, ServerState(1, {"w": np.ones(2, np.float32)}, {}), {"round_id": 1}, 1700.0)
    else:
        store.abandon_round(1, {"round_id": 1}, 1700.0)
    assert sorted(p.name for p in folder.iterdir()) == [MARKER]
    # A crash between the close's transaction and the delete leaves the file: the next open sweeps it.
    (folder / "round-1.log").write_bytes(b"left by a killed coordinator")
    (folder / "notes.txt").write_bytes(b"not fedge's")  # not a round file: left alone
    store.close()
    RoundStore(tmp_path / "s.db").close()
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, "notes.txt"]


def test_the_open_rounds_file_survives_a_reopen(tmp_path):
    store = RoundStore(tmp_path / "s.db")
    store.open_round(_round(1))
    store.add_update(1, _update(0, "a"))
    store.close()
    RoundStore(tmp_path / "s.db").close()
    assert (tmp_path / "s.db.payloads" / "round-1.log").is_file()


def test_bytes_appended_before_a_failed_transaction_are_skipped_not_reused(tmp_path, monkeypatch):
    """Killed (here: failed) between the log's fsync and the rows' commit: the bytes stay
    unreferenced and the next append goes after them."""
    store = RoundStore(tmp_path / "s.db")
    store.open_round(_round(1))
    kept = _update(0, "a")
    store.add_update(1, kept)

    def failing_tx():
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_tx", failing_tx)
    lost = _update(1, "b")
    with pytest.raises(sqlite3.OperationalError):
        store.add_update(1, lost)
    monkeypatch.undo()
    later = _update(1, "b")
    store.add_update(1, later)
    assert _events(store) == _want(kept, later)
    log = tmp_path / "s.db.payloads" / "round-1.log"
    assert log.read_bytes() == kept.payload + lost.payload + later.payload


def test_a_failed_write_leaves_no_partial_tail(tmp_path, monkeypatch):
    store = RoundStore(tmp_path / "s.db")
    store.open_round(_round(1))
    kept = _update(0, "a")
    store.add_update(1, kept)
    real_write, calls = os.write, []

    def write_then_fail(fd, data):
        calls.append(len(data))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write_then_fail)
    with pytest.raises(OSError):
        store.add_update(1, _update(1, "b"), _update(2, "c"))
    monkeypatch.undo()
    assert (tmp_path / "s.db.payloads" / "round-1.log").read_bytes() == kept.payload
    assert _events(store) == _want(kept)


def test_a_short_write_is_continued(tmp_path, monkeypatch):
    store = RoundStore(tmp_path / "s.db")
    store.open_round(_round(1))
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:777]))
    update = _update(0, "a", 5000)
    store.add_update(1, update)
    monkeypatch.undo()
    assert _events(store) == _want(update)


def test_an_update_for_a_round_that_is_not_open_makes_no_file(tmp_path):
    store = RoundStore(tmp_path / "s.db")
    with pytest.raises(ValueError, match="not open"):
        store.add_update(7, _update(0, "a"))
    assert not (tmp_path / "s.db.payloads" / "round-7.log").exists()


def test_a_truncated_log_is_a_named_error_not_wrong_bytes(tmp_path):
    store = RoundStore(tmp_path / "s.db")
    store.open_round(_round(1))
    store.add_update(1, _update(0, "a"), _update(1, "b"))
    store.close()
    log = tmp_path / "s.db.payloads" / "round-1.log"
    log.write_bytes(log.read_bytes()[:-10])
    with pytest.raises(StoreCorrupt, match="not there"):
        RoundStore(tmp_path / "s.db").load_open_round()


def test_a_folder_fedge_did_not_make_is_refused_and_left_alone(tmp_path):
    folder = tmp_path / "s.db.payloads"
    folder.mkdir()
    (folder / "round-1.log").write_bytes(b"someone else's")
    with pytest.raises(ConfigError, match="not made by fedge"):
        RoundStore(tmp_path / "s.db")
    assert (folder / "round-1.log").read_bytes() == b"someone else's"


def test_a_sweep_never_deletes_a_file_made_after_it_listed_the_folder(tmp_path):
    """Another process opens round 2 and writes its first payloads while this one sweeps: the
    sweep asks which rounds are open only after listing, so it cannot see round 2's file as
    belonging to a round that is not open."""
    log = PayloadLog(tmp_path / "p")
    log.append(1, [b"closed round"])

    def open_rounds_meanwhile_round_2_opens():
        PayloadLog(tmp_path / "p").append(2, [b"acked payload of round 2"])
        return {2}

    assert log.sweep(open_rounds_meanwhile_round_2_opens) == [1]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == [MARKER, "round-2.log"]


def test_a_crash_while_making_the_folder_never_leaves_it_without_its_marker(tmp_path, monkeypatch):
    store = RoundStore(tmp_path / "s.db")
    store.open_round(_round(1))

    def crash(*_args):
        raise KeyboardInterrupt  # the process dies between writing the marker and the rename

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(KeyboardInterrupt):
        store.add_update(1, _update(0, "a"))
    monkeypatch.undo()
    assert not (tmp_path / "s.db.payloads").exists()
    store.close()
    again = RoundStore(tmp_path / "s.db")  # not refused as a folder fedge did not make
    update = _update(0, "a")
    again.add_update(1, update)
    assert _events(again) == _want(update) and (tmp_path / "s.db.payloads" / MARKER).is_file()


def test_a_file_made_by_a_failed_append_still_gets_its_folder_entry_synced(tmp_path, monkeypatch):
    log = PayloadLog(tmp_path / "p")
    synced, real_fsync = [], os.fsync
    monkeypatch.setattr(log, "_sync_directory", lambda folder: synced.append(folder))

    def fail_once(fd):
        monkeypatch.setattr(os, "fsync", real_fsync)
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", fail_once)
    with pytest.raises(OSError):
        log.append(1, [b"first"])  # the file exists now, its folder entry not yet synced
    assert tmp_path / "p" not in synced
    assert log.append(1, [b"second"]) == [0]
    assert synced.count(tmp_path / "p") == 1
    log.append(1, [b"third"])
    assert synced.count(tmp_path / "p") == 1  # once per round and process


def test_a_half_made_folder_of_a_dead_process_is_removed_and_nothing_else(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    ours = tmp_path / f".s.db.payloads.tmp-{dead}"  # killed between mkdir and rename: the marker only
    ours.mkdir()
    (ours / MARKER).write_text("update payloads of open rounds")
    alive = tmp_path / f".s.db.payloads.tmp-{os.getppid()}"  # its process may still rename it
    alive.mkdir()
    (alive / MARKER).write_text("")
    foreign = tmp_path / ".s.db.payloads.tmp-999999999"  # our name, someone else's file in it
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not fedge's")
    huge = tmp_path / ".s.db.payloads.tmp-99999999999999999999"  # no pid os.kill can take: left alone, no crash
    huge.mkdir()
    (huge / MARKER).write_text("")
    RoundStore(tmp_path / "s.db").close()
    assert not ours.exists() and (alive / MARKER).exists() and (foreign / "notes.txt").read_text() == "not fedge's"
    assert (huge / MARKER).exists()
