"""The device journal at its documented edges, each checked by reopening it from disk: an
update of exactly max_message_bytes is kept (one byte more is refused), an Ack naming another
task than the kept update's changes nothing, and the seen-task file keeps the newest `kept`
rows (mutation5-device audit)."""

from __future__ import annotations

import json

import pytest

from fedge.edge_runtime.journal import DeviceJournal
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import PayloadTooLarge
from fedge.edge_runtime.kernel.protocol import Update
from fedge.edge_runtime.seen_tasks import _ROW_BYTES, SeenTasks
from fedge.edge_runtime.unanswered import INTERRUPTED, interrupted


def _update(task_id: str = "t", update_id: str = "u", payload: bytes = b"xyz") -> Update:
    return Update(device_id="d1", round_id=3, task_id=task_id, update_id=update_id, model_id="m", base_version=2,
                  num_examples=5, payload=payload)


def test_an_update_of_exactly_the_message_limit_is_kept_and_one_byte_more_is_refused(tmp_path):
    size = len(encode_message(_update()))
    journal = DeviceJournal(tmp_path / "at", max_message_bytes=size, clock=ManualClock())
    assert journal.keep(_update()) == encode_message(_update())
    assert DeviceJournal(tmp_path / "at", max_message_bytes=size).kept("u") == encode_message(_update())
    small = DeviceJournal(tmp_path / "under", max_message_bytes=size - 1, clock=ManualClock())
    with pytest.raises(PayloadTooLarge):
        small.keep(_update())
    assert DeviceJournal(tmp_path / "under").kept("u") is None


def test_an_ack_naming_another_task_changes_nothing_on_disk(tmp_path):
    journal = DeviceJournal(tmp_path, clock=ManualClock())
    journal.received("t", 3)
    journal.keep(_update())
    assert journal.acknowledged("other", "u", round_id=3) is False
    again = DeviceJournal(tmp_path)
    assert again.kept("u") == encode_message(_update())  # still resent until its own Ack
    assert "other" not in again.seen  # a task never seen is not recorded as answered
    assert again.acknowledged("t", "u", round_id=3) is True
    assert DeviceJournal(tmp_path).kept("u") is None


def test_the_seen_task_file_keeps_exactly_the_newest_rows_across_a_reopen(tmp_path):
    seen = SeenTasks(tmp_path / "seen.json", kept=3)
    ids = [f"t{i}" for i in range(7)]
    for i, task_id in enumerate(ids):
        seen.add(task_id, i)
        newest = ids[max(0, i + 1 - 3):i + 1]  # the rule: the newest `kept`, oldest first
        assert [row[0] for row in json.loads((tmp_path / "seen.json").read_text())] == newest  # as written
        assert list(SeenTasks(tmp_path / "seen.json", kept=3)._rows) == newest  # as read back
    seen.answered("t6")
    assert SeenTasks(tmp_path / "seen.json", kept=3).unanswered() == [("t4", 4), ("t5", 5)]


def test_a_file_with_more_rows_than_kept_is_read_as_its_newest_rows(tmp_path):
    path = tmp_path / "seen.json"
    path.write_text(json.dumps([[f"t{i}", i, False] for i in range(5)]))
    assert SeenTasks(path, kept=3).unanswered() == [("t2", 2), ("t3", 3), ("t4", 4)]


def test_a_file_of_exactly_the_size_limit_is_read(tmp_path):
    path, kept = tmp_path / "seen.json", 2
    rows = json.dumps([["t0", 0, False]]).encode()
    path.write_bytes(rows + b" " * (kept * _ROW_BYTES - len(rows)))  # trailing blanks: still valid JSON
    assert SeenTasks(path, kept=kept).unanswered() == [("t0", 0)]
    path.write_bytes(rows + b" " * (kept * _ROW_BYTES + 1 - len(rows)))
    assert SeenTasks(path, kept=kept).unanswered() == []  # one byte over: not a file fedge wrote


def test_a_task_answered_by_this_run_is_not_declined_as_interrupted(tmp_path):
    journal = DeviceJournal(tmp_path, clock=ManualClock())
    journal.received("t1", 4)  # received, never answered: by the journal alone, interrupted
    journal.received("t2", 5)
    assert [(d.task_id, d.round_id, d.reason) for d in interrupted(journal, set(), "d1")] == [
        ("t1", 4, INTERRUPTED), ("t2", 5, INTERRUPTED)]
    assert [d.task_id for d in interrupted(journal, {"t1"}, "d1")] == ["t2"]


def _run_with_timeout(fn, seconds: float = 10.0):
    """fn() in a thread: a read that blocks (a FIFO opened without O_NONBLOCK) fails the test, not hangs it."""
    import threading

    done = {}
    worker = threading.Thread(target=lambda: done.setdefault("value", fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    assert "value" in done, "the read blocked"
    return done["value"]


def test_a_fifo_at_the_seen_task_file_is_ignored_not_waited_on(tmp_path):
    """A FIFO passed the size check and blocked the device's start until a writer came."""
    import os

    os.mkfifo(tmp_path / "seen_tasks.json")
    seen = _run_with_timeout(lambda: SeenTasks(tmp_path / "seen_tasks.json"))
    assert "t1" not in seen


def test_a_fifo_named_like_a_kept_update_is_set_aside_not_waited_on(tmp_path):
    import os

    from fedge.edge_runtime.pending import PendingUploads

    (tmp_path / "pending").mkdir()
    os.mkfifo(tmp_path / "pending" / "r3-abc.msg")
    pending = _run_with_timeout(lambda: PendingUploads(tmp_path / "pending", ManualClock()))
    assert len(pending) == 0 and (tmp_path / "pending" / "r3-abc.msg.damaged").exists()
