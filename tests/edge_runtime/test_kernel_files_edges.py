"""kernel/files.py at its edges (mutation7-kernel): a durable write fsyncs its data before the
rename, and only then; a failed write leaves no temp file; the sweep spares this process's own
temp file and a pid it cannot know to be dead."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from fedge.edge_runtime.kernel import files
from fedge.edge_runtime.kernel.files import atomic_write_bytes, pid_running, sweep_temp_files


def test_a_durable_write_fsyncs_the_data_before_the_rename_and_a_plain_one_does_not(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    atomic_write_bytes(tmp_path / "state.npz", b"durable")
    assert calls == ["fsync", "replace"]  # the data reaches the disk before the name points at it
    calls.clear()
    atomic_write_bytes(tmp_path / "cache.json", b"harmless", durable=False)
    assert calls == ["replace"]
    assert (tmp_path / "state.npz").read_bytes() == b"durable"


def test_a_write_that_fails_at_the_rename_leaves_no_temp_file(tmp_path):
    (tmp_path / "taken").mkdir()  # a folder where the file goes: os.replace refuses it
    (tmp_path / "taken" / "x").write_bytes(b"someone's")
    try:
        atomic_write_bytes(tmp_path / "taken", b"data")
    except OSError:
        pass
    else:
        raise AssertionError("a folder was replaced by a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (tmp_path / "taken" / "x").read_bytes() == b"someone's"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=60)
    return proc.pid


def test_the_sweep_spares_this_process_and_pids_it_cannot_know_dead(tmp_path):
    dead = _dead_pid()
    mine = tmp_path / f".state.npz.tmp-{os.getpid()}"  # a live writer's: this process's own
    huge = tmp_path / f".state.npz.tmp-{2**70}"  # no pid: os.kill raises OverflowError
    gone = tmp_path / f".state.npz.tmp-{dead}"
    for p in (mine, huge, gone):
        p.write_bytes(b"half")
    assert pid_running(2**70) and pid_running(os.getpid())
    assert sweep_temp_files(tmp_path) == [gone]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine.name, huge.name])


def test_a_pid_owned_by_someone_else_is_running(monkeypatch):
    def refused(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(files.os, "kill", refused)
    assert pid_running(12345) is True


def test_a_link_planted_at_the_temp_name_is_not_followed(tmp_path):
    """The temp file's name is predictable (.<name>.tmp-<pid>): opening it followed a link planted
    there, and the link's target was overwritten. Now the write fails and the target is untouched;
    a link at the real path is replaced by the rename, never followed."""
    target = tmp_path / "not-fedges"
    target.write_bytes(b"precious")
    (tmp_path / f".state.json.tmp-{os.getpid()}").symlink_to(target)
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "state.json", b"fedge's", durable=False)
    assert target.read_bytes() == b"precious" and not (tmp_path / "state.json").exists()
    (tmp_path / "real.json").symlink_to(target)
    atomic_write_bytes(tmp_path / "real.json", b"fedge's")
    assert target.read_bytes() == b"precious" and (tmp_path / "real.json").read_bytes() == b"fedge's"


def test_a_write_with_a_mode_gets_exactly_that_mode_and_replaces_the_file_it_finds(tmp_path):
    """mode= is for secrets (a device's identity key, its exported personal model): they were
    written with the umask's 0644, then at best chmodded after the data was in."""
    import stat

    secret, plain = tmp_path / "secret.onnx", tmp_path / "plain.json"
    secret.write_bytes(b"old")
    secret.chmod(0o644)
    stale = secret.with_name(f".{secret.name}{files._TEMP}{os.getpid()}")  # a killed writer's, same pid
    stale.write_bytes(b"stale")
    stale.chmod(0o666)
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(secret, b"personal params", mode=0o600)
        atomic_write_bytes(plain, b"{}")
    finally:
        os.umask(umask)
    assert secret.read_bytes() == b"personal params" and not stale.exists()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600  # a new file: the old one's 0644 is gone with it
    assert stat.S_IMODE(plain.stat().st_mode) == 0o644  # without mode=: as before, the umask's
