"""A full disk, a read-only state folder, and damaged files the device reads at start.

Each gives a named decline or a named error, never a traceback: a write that failed inside a
task escaped handle_task as a bare OSError (the task was never answered and its round waited
for the deadline); a damaged data file stopped the start with BadZipFile or EOFError; a
config nested a few thousand deep with RecursionError.
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.device_config import load_device_config, load_local_data
from fedge.edge_runtime.journal import DeviceJournal
from fedge.edge_runtime.kernel import files
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ArtifactError, ConfigError, DatasetError, DeviceStateError
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE, load_manifest
from fedge.edge_runtime.kernel.protocol import CheckIn, Decline, Update
from fedge.edge_runtime.seen_tasks import SeenTasks
from fedge.edge_runtime.store import DeviceStore
from tests.edge_runtime.test_crash_windows import _same, _setup, _spy, _state
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _fail_writes(monkeypatch, err: int, suffix: str = "") -> None:
    """Every atomic write (of a file whose name ends with `suffix`) fails with `err` (atomic_write_bytes
    opens its temp file with os.open, O_NOFOLLOW)."""
    real = os.open

    def failing(path, flags, *args, **kwargs):
        if flags & os.O_WRONLY and str(path).endswith(f"{suffix}.tmp-{os.getpid()}"):
            raise OSError(err, os.strerror(err), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(files.os, "open", failing)


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


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_a_damaged_data_file_is_a_named_dataset_error(tmp_path):
    good = _npz(x_train=np.zeros((20, 4), np.float32), y_train=np.zeros(20, np.int64),
                x_test=np.zeros((4, 4), np.float32), y_test=np.zeros(4, np.int64))
    flipped = bytearray(good)
    flipped[200] ^= 0xFF  # inside x_train's bytes: the zip's CRC says so
    for name, data in {"empty": b"", "truncated": good[: len(good) // 2], "no_tail": good[:-10],
                       "zip_header_only": b"PK\x03\x04" + bytes(100), "bit_flip": bytes(flipped)}.items():
        path = tmp_path / f"{name}.npz"
        path.write_bytes(data)
        with pytest.raises(DatasetError, match=f"{name}.npz: not a readable .npz file"):
            load_local_data(path)
    (tmp_path / "good.npz").write_bytes(good)
    assert len(load_local_data(tmp_path / "good.npz").y_train) == 20


def test_a_device_config_nested_too_deep_is_a_named_config_error(tmp_path):
    path = tmp_path / "device.toml"
    path.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="device.toml: not valid TOML: arrays or tables nested too deep"):
        load_device_config(path)


def _rewrite_state(path, change) -> None:
    arrays = files.load_npz(path)
    change(arrays)
    path.write_bytes(_npz(**arrays))


def _first(arrays, part: str) -> str:
    return next(k for k in arrays if k.startswith(f"{part}/") and not k.endswith("//kind"))


STATE_DAMAGE = {  # a state.npz that reads as a zip but holds what no state holds
    "nan_residual": lambda a: a.update({_first(a, "residual"): np.full_like(a[_first(a, "residual")], np.nan)}),
    "text_residual": lambda a: a.update({_first(a, "residual"): np.full(a[_first(a, "residual")].shape, "x")}),
    "absent_and_present": lambda a: a.update({"residual//kind": np.array("none")}),
}


@pytest.mark.parametrize("damage", sorted(STATE_DAMAGE))
def test_a_state_holding_what_no_state_holds_is_declined_as_bad_state(model, tmp_path, damage):
    # A NaN residual (a flipped exponent bit), text where numbers go, or a part marked both absent
    # and present escaped handle_task as a bare ValueError/TypeError: the task was never answered.
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    path = root / "dev0" / fleet.model[1].model_id / "state.npz"
    _rewrite_state(path, STATE_DAMAGE[damage])
    damaged = path.read_bytes()
    fleet.drain()
    declines = [m for m in _spy(fleet) if isinstance(m, Decline) and m.round_id == 2]
    assert [d.reason for d in declines] == ["bad_state"] and f"{path} is damaged" in declines[0].detail
    assert path.read_bytes() == damaged


def test_a_file_where_the_model_state_folder_goes_is_declined_as_bad_state_and_kept(model, tmp_path):
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    folder = root / "dev0" / fleet.model[1].model_id
    shutil.rmtree(folder)
    folder.write_bytes(b"a person's file")
    fleet.drain()
    declines = [m for m in _spy(fleet) if isinstance(m, Decline) and m.round_id == 2]
    assert [d.reason for d in declines] == ["bad_state"] and "is not a folder" in declines[0].detail
    assert folder.read_bytes() == b"a person's file"
    assert not agent.runtime.check_in().eligible  # and its check-ins say so until it is moved aside


def test_a_model_state_folder_that_cannot_be_made_is_declined_as_state_unwritable(model, tmp_path, monkeypatch):
    # A read-only or full state root (root writes to any folder, so mkdir fails here by hand): the
    # PermissionError escaped handle_task as a bare OSError, and the task was never answered. Not
    # bad_state: that parks the device, and with no folder its check-ins never say anything new.
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    folder = root / "dev0" / fleet.model[1].model_id
    shutil.rmtree(folder)
    real_mkdir = Path.mkdir

    def mkdir(path, *args, **kwargs):
        if path == folder:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    fleet.drain()
    declines = [m for m in _spy(fleet) if isinstance(m, Decline) and m.round_id == 2]
    assert [d.reason for d in declines] == ["state_unwritable"]
    assert f"{folder} cannot be made" in declines[0].detail and "Permission denied" in declines[0].detail
    assert not folder.exists()
    assert fleet.coordinator.eligible_devices() == ["dev0"]  # not parked: the next round asks it again


def test_a_residual_of_other_shapes_is_started_over_not_a_bare_error(model, tmp_path):
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    path = root / "dev0" / fleet.model[1].model_id / "state.npz"
    _rewrite_state(path, lambda a: a.update({_first(a, "residual"): np.zeros(7, np.float32)}))
    fleet.drain()
    assert [type(m) for m in _spy(fleet) if isinstance(m, (Update, Decline)) and m.round_id == 2] == [Update]


def test_journal_files_fedge_cannot_use_are_named_or_skipped_never_deleted(tmp_path):
    home = tmp_path / "dev0"
    (home / "m1" / "staged-abc.npz").mkdir(parents=True)  # a folder by a staged state's name: not fedge's
    (home / "seen_tasks.json").write_text("[" * 100_000 + "]" * 100_000)  # RecursionError in json
    (home / "pending").write_bytes(b"a person's file")
    with pytest.raises(DeviceStateError, match="pending is not a folder"):
        DeviceJournal(home)
    (home / "pending").unlink()
    journal = DeviceJournal(home)
    journal.recover()
    assert (home / "m1" / "staged-abc.npz").is_dir() and journal.seen.unanswered() == []


@pytest.mark.parametrize("damage", ["not_utf8", "folder", "nested"])
def test_a_damaged_model_manifest_is_a_named_artifact_error(tmp_path, damage):
    # Raised UnicodeDecodeError, IsADirectoryError or RecursionError out of the task (unanswered).
    path = tmp_path / MANIFEST_FILE
    if damage == "folder":
        path.mkdir()
    else:
        path.write_bytes(b"\xff\xfe{" if damage == "not_utf8" else b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(ArtifactError, match=f"{path}: (cannot be read|not a valid fedge manifest)"):
        load_manifest(tmp_path)


def test_kept_frames_that_are_not_the_update_their_name_says_are_set_aside_at_start(tmp_path):
    # A CheckIn or Decline frame in pending/ raised AttributeError (no task_id) at every start.
    pending = tmp_path / "dev0" / "pending"
    pending.mkdir(parents=True)
    good = Update("dev0", 1, "t1", "u1", "m", 0, 5, b"p")
    frames = {"r1-u1.msg": encode_message(good), "r1-ck.msg": encode_message(CheckIn("dev0")),
              "r1-dc.msg": encode_message(Decline("dev0", 1, "t2", "x")), "r1-u9.msg": encode_message(good),
              "r1-bad.msg": b"garbage"}
    for name, frame in frames.items():
        (pending / name).write_bytes(frame)
    journal = DeviceJournal(tmp_path / "dev0")
    assert [p.update_id for p in journal.pending.items()] == ["u1"]
    assert journal.interrupted() == [] and "t1" in journal and "t2" not in journal
    assert {p.name: p.read_bytes() for p in pending.iterdir()} == {
        "r1-u1.msg": frames["r1-u1.msg"], **{f"{n}.damaged": f for n, f in frames.items() if n != "r1-u1.msg"}}


def test_a_seen_tasks_file_larger_than_its_rows_could_be_is_not_read(tmp_path, monkeypatch):
    path = tmp_path / "seen_tasks.json"
    rows = [["é" * 256, 2**63 - 1, False] for _ in range(4)]  # the largest rows fedge writes
    path.write_text(json.dumps(rows))
    assert len(SeenTasks(path, kept=4).unanswered()) == 1  # one id, four times: the largest file 4 rows make
    path.write_text(json.dumps(rows + [["t", 1, False]] * 20_000))
    from fedge.edge_runtime.kernel import manifest
    from fedge.edge_runtime.seen_tasks import _ROW_BYTES

    real, read = manifest.open_regular, []

    class Counted:  # the file read_capped opens, counting the bytes it takes
        def __init__(self, fh):
            self.fh = fh

        def read(self, n=-1):
            data = self.fh.read(n)
            read.append(len(data))
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(manifest, "open_regular", lambda p: Counted(real(p)))
    assert SeenTasks(path, kept=4).unanswered() == []
    assert 0 < sum(read) <= 4 * _ROW_BYTES + 1 < path.stat().st_size  # not read whole into memory
