"""The async journal (coordinator/async_mode/journal.py) read back from its file, found blind by
benchmarks/results/2026-12-06-mutation6-async: the fsync setting a kill -9 relies on, the task an
accepted update retires, the replay order and the reported norm a restart hands back, and
`forget` at its exact buffer bounds (payloads of closed buffers dropped; keys kept for
keep_buffers buffers), checked against the table itself."""

from __future__ import annotations

import sqlite3

import pytest

from fedge.coordinator.async_mode.journal import BufferedRow, MemoryJournal, SqliteJournal, TaskRow


def _row(buffer_id: int, seq: int, device: str = "d", norm: float | None = None) -> BufferedRow:
    return BufferedRow(device, buffer_id, f"u{buffer_id}-{seq}", f"{seq:064x}", buffer_id, seq, 0, 10,
                       bytes([seq]) * 4, b"", norm)


def test_a_durable_journal_syncs_every_commit_and_a_fast_one_does_not(tmp_path):
    """SQLite's own answer (PRAGMA synchronous: 2 = FULL, 1 = NORMAL) on the journal's connection."""
    for durable, level in ((True, 2), (False, 1)):
        journal = SqliteJournal(tmp_path / f"{durable}.db", durable=durable)
        assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == level
        journal.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_an_accepted_update_retires_its_task_and_comes_back_in_seq_order_with_its_norm(tmp_path, kind):
    journal = SqliteJournal(tmp_path / "j.db") if kind == "sqlite" else MemoryJournal()
    for task in ("t0", "t1", "t2"):
        journal.add_task(TaskRow(task, "d" + task, 4, 3, 100.0))
    for seq, task, norm in ((2, "t2", None), (0, "t0", 1.5), (1, "t1", 0.25)):  # written out of seq order
        journal.add_update(_row(4, seq, "d" + task, norm), task)
    if kind == "sqlite":  # reopened from disk, as a restart reads it
        journal.close()
        journal = SqliteJournal(tmp_path / "j.db")
    assert journal.tasks() == []
    rows = journal.buffered(4)
    assert [(r.seq, r.device_id, r.reported_norm) for r in rows] == [(0, "dt0", 1.5), (1, "dt1", 0.25),
                                                                      (2, "dt2", None)]
    assert rows == sorted((_row(4, s, "dt" + str(s), n) for s, n in ((0, 1.5), (1, 0.25), (2, None))),
                          key=lambda r: r.seq)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_forget_drops_closed_payloads_and_keeps_keys_for_exactly_keep_buffers(tmp_path, kind):
    keep = 3
    journal = SqliteJournal(tmp_path / "j.db", keep_buffers=keep) if kind == "sqlite" else MemoryJournal(keep)
    for buffer_id in range(1, 9):
        journal.add_update(_row(buffer_id, 0), "none")
    journal.forget(6)  # buffers 1..6 closed: keys of buffers <= 6 - keep = 3 go, of 4..6 stay
    kept = [b for b in range(1, 9) if journal.counted_digest("d", b, f"u{b}-0") is not None]
    assert kept == [4, 5, 6, 7, 8]
    if kind == "sqlite":
        with sqlite3.connect(tmp_path / "j.db") as db:
            payloads = dict(db.execute("SELECT buffer_id, payload IS NOT NULL FROM async_updates"))
        assert payloads == {4: 0, 5: 0, 6: 0, 7: 1, 8: 1}  # the closed buffer 6's payload too
        assert [r.payload for r in journal.buffered(7)] == [bytes([0]) * 4]
