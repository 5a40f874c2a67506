"""What crashes and damaged files leave in a device's state folder, at the next start.

A write killed before its rename (kill -9) left its temp file forever; a staged state or a
kept update that cannot be read stopped the start (or the kept update was deleted). Now the
start deletes only the temp files fedge's own atomic write makes, of processes that no longer
run, and sets aside (renames `.damaged`) its own files it cannot read; nothing else is touched.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys

import pytest

from fedge.edge_runtime.journal import DeviceJournal
from fedge.edge_runtime.kernel.errors import DeviceStateError
from fedge.edge_runtime.kernel.files import set_aside, sweep_temp_files
from fedge.edge_runtime.pending import PendingUploads

_KILLED_MID_WRITE = """
import os, signal, sys
from pathlib import Path
from fedge.edge_runtime.kernel import files
files.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)  # killed after the write, before the rename
files.atomic_write_bytes(Path(sys.argv[1]), b"new state")
"""


def _killed_write(path) -> int:
    """Run atomic_write_bytes in a process killed -9 before its rename; its pid."""
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_MID_WRITE, str(path)])
    assert proc.wait(timeout=60) == -9
    return proc.pid


def test_a_start_deletes_the_temp_files_of_killed_writes_and_nothing_else(tmp_path, caplog):
    home = tmp_path / "dev0"
    model = home / "m1"
    model.mkdir(parents=True)
    (model / "state.npz").write_bytes(b"old state")
    dead = _killed_write(model / "state.npz")
    left = model / f".state.npz.tmp-{dead}"
    assert left.read_bytes() == b"new state" and (model / "state.npz").read_bytes() == b"old state"
    outside = tmp_path / "outside"
    outside.write_bytes(b"not fedge's")
    keep = {
        model / f".state.npz.tmp-{os.getpid()}": b"this process's own write",
        home / f".seen_tasks.json.tmp-{os.getppid()}": b"a live process's write",
        home / f"notes.tmp-{dead}": b"not the helper's name",
        home / f".notes.tmp-{dead}x": b"not the helper's name",
        home / "state.npz.tmp": b"a person's",
    }
    for path, data in keep.items():
        path.write_bytes(data)
    (home / f".link.tmp-{dead}").symlink_to(outside)
    (home / f".folder.tmp-{dead}").mkdir()

    with caplog.at_level(logging.WARNING, "fedge.journal"):
        DeviceJournal(home).recover()
    assert not left.exists()
    assert str(left) in caplog.text and "a crash cut short" in caplog.text
    assert all(path.read_bytes() == data for path, data in keep.items())
    assert (home / f".link.tmp-{dead}").is_symlink() and outside.read_bytes() == b"not fedge's"
    assert (home / f".folder.tmp-{dead}").is_dir()
    assert sweep_temp_files(home) == []  # a second start finds nothing more


def test_set_aside_never_overwrites_an_earlier_damaged_copy(tmp_path):
    for n in range(3):
        (tmp_path / "r1-u.msg").write_bytes(b"damaged %d" % n)
        set_aside(tmp_path / "r1-u.msg")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        "r1-u.msg.damaged": b"damaged 0", "r1-u.msg.damaged-1": b"damaged 1", "r1-u.msg.damaged-2": b"damaged 2"}


def test_kept_updates_that_cannot_be_read_are_set_aside_and_the_others_load(tmp_path, caplog):
    # A folder by a kept update's name, or a file past the size any update may have, stopped
    # every start (IsADirectoryError) or was read whole into memory.
    (tmp_path / "r1-folder.msg").mkdir()
    (tmp_path / "r1-huge.msg").write_bytes(b"x" * 101)
    (tmp_path / "r2-good.msg").write_bytes(b"y" * 100)
    (tmp_path / "notes.txt").write_bytes(b"a person's")
    with caplog.at_level(logging.ERROR, "fedge.pending"):
        pending = PendingUploads(tmp_path, max_bytes=100)
    assert [(p.update_id, p.payload) for p in pending.items()] == [("good", b"y" * 100)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes.txt", "r1-folder.msg.damaged", "r1-huge.msg.damaged", "r2-good.msg"]
    assert (tmp_path / "r1-huge.msg.damaged").read_bytes() == b"x" * 101
    assert "r1-folder.msg" in caplog.text and "r1-huge.msg" in caplog.text


def test_a_damaged_file_that_cannot_be_set_aside_is_a_named_error(tmp_path, monkeypatch):
    (tmp_path / "r1-bad.msg").mkdir()  # unreadable as a kept update
    monkeypatch.setattr(os, "rename", lambda *a: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    with pytest.raises(DeviceStateError, match="r1-bad.msg cannot be read, nor set aside .*Read-only"):
        PendingUploads(tmp_path)
    assert (tmp_path / "r1-bad.msg").is_dir()
