"""A full disk, a read-only state folder: a named decline, never a traceback. A write that
failed inside a task escaped handle_task as a bare OSError (the task was never answered and its
round waited for the deadline)."""

from __future__ import annotations

import errno
import os

import pytest

from fedge.edge_runtime.kernel import files
from fedge.edge_runtime.kernel.protocol import Decline, Update
from fedge.edge_runtime.store import DeviceStore
from tests.edge_runtime.test_crash_windows import _same, _setup, _spy, _state
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _fail_writes(monkeypatch, err: int, suffix: str = "") -> None:
    """Every atomic write (of a file whose name ends with `suffix`) fails with `err`."""
    real = open

    def failing(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(f"{suffix}.tmp-{os.getpid()}"):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(files, "open", failing, raising=False)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
@pytest.mark.parametrize("suffix", ["", ".msg"])  # every write, or only keeping the update (the commit point)
def test_a_state_that_cannot_be_written_declines_the_task_by_name_and_keeps_nothing(model, tmp_path, monkeypatch,
                                                                                    err, suffix):
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    model_id = fleet.model[1].model_id
    _fail_writes(monkeypatch, err, suffix)
    fleet.drain()
    answers = [m for m in _spy(fleet) if isinstance(m, (Update, Decline)) and m.round_id == 2]
    assert [(type(m), m.reason, m.stage) for m in answers] == [(Decline, "state_unwritable", "during")]
    assert os.strerror(err) in answers[0].detail
    assert fleet.coordinator.round.machine.declined == {"dev0": "state_unwritable"}
    assert len(agent.pending) == 0 and DeviceStore(root / "dev0", model_id).staged() == []
    assert _same(_state(root, model_id), _state(snapshot, model_id))  # as before the task
    assert not [p for p in (root / "dev0").rglob("*.tmp-*")]

    monkeypatch.undo()  # space again: the next round's task trains
    fleet.coordinator.tick()
    fleet.clock.advance(3600)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    assert fleet.coordinator.tick().committed


@pytest.mark.parametrize("suffix", ["global.npz", "meta.json", "seen_tasks.json"])
def test_files_whose_loss_is_harmless_do_not_stop_a_task_when_the_disk_is_full(model, tmp_path, monkeypatch, suffix):
    # global.npz (for export), meta.json (for people) and seen_tasks.json are not fsync'd because
    # losing them is harmless (store.py, seen_tasks.py); failing to write them failed the task.
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    _fail_writes(monkeypatch, errno.ENOSPC, suffix)
    fleet.drain()
    assert [type(m) for m in _spy(fleet) if isinstance(m, (Update, Decline)) and m.round_id == 2] == [Update]
    assert fleet.coordinator.tick().committed and len(agent.pending) == 0
