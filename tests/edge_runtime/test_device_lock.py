"""One `fedge device run` per state folder (device_lock.py): a second process on the same folder
wrote the same files and took the first's MQTT client id; it is refused at start."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from fedge.edge_runtime.device_lock import DEVICE_LOCK_FILE, device_lock
from fedge.edge_runtime.kernel.errors import ConfigError, ServiceUnavailable
from fedge.tools.cli import main

# Holds the lock like a device process, says so, then waits to be killed.
_HOLDER = """
import sys, time
from pathlib import Path
from fedge.edge_runtime.device_lock import device_lock
with device_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def _refusal(own) -> str:
    return f"device state folder {own} is in use by another device process"


def test_a_second_hold_on_the_same_folder_is_refused_until_the_first_is_released(tmp_path):
    """Two open file descriptions of device.lock conflict even in one process: the second is
    refused, naming the folder and the holder's pid; released, the folder is free again."""
    own = tmp_path / "pi-a"
    own.mkdir()
    with device_lock(own):
        held = f"{_refusal(own)} (pid {os.getpid()} holds {own / 'device.lock'})"
        with pytest.raises(ServiceUnavailable, match=re.escape(held)):
            with device_lock(own):
                pass
        with device_lock(tmp_path):  # another folder is another device's
            pass
    with device_lock(own):  # released: free again
        pass


def test_a_relative_folder_is_named_absolute_in_both_refusals(tmp_path, monkeypatch):
    """A config's relative state_dir gave "device state folder state/pi-a is in use": which
    state/, of which process's current folder, it did not say."""
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "state" / "pi-a"
    own.mkdir(parents=True)
    relative = own.relative_to(tmp_path)
    with device_lock(relative):
        with pytest.raises(ServiceUnavailable, match=f"^{re.escape(_refusal(own))} \\(pid {os.getpid()} holds "
                                                     f"{re.escape(str(own / DEVICE_LOCK_FILE))}\\)"):
            with device_lock(relative):
                pass
    (own / DEVICE_LOCK_FILE).unlink()
    (own / DEVICE_LOCK_FILE).mkdir()
    with pytest.raises(ConfigError, match=f"^device state folder {re.escape(str(own))}: cannot open its lock file "
                                          f"{re.escape(str(own / DEVICE_LOCK_FILE))}: "):
        with device_lock(relative):
            pass


def test_a_holder_killed_with_sigkill_leaves_the_folder_free(tmp_path):
    """The kernel drops the flock of a process that dies however it dies: the lock file stays,
    and blocks no restart."""
    own = tmp_path / "pi-a"
    own.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(own)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline() == "held\n"
        with pytest.raises(ServiceUnavailable, match=rf"\(pid {proc.pid} holds "):
            with device_lock(own):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert (own / DEVICE_LOCK_FILE).exists()
    with device_lock(own):
        assert (own / DEVICE_LOCK_FILE).read_text() == f"{os.getpid()}\n"  # the new holder's pid, not the dead one's


def test_a_lock_file_that_cannot_be_opened_is_a_config_error_naming_it(tmp_path):
    own = tmp_path / "pi-a"
    (own / DEVICE_LOCK_FILE).mkdir(parents=True)  # a folder by its name
    with pytest.raises(ConfigError, match=re.escape(f"cannot open its lock file {own / DEVICE_LOCK_FILE}")):
        with device_lock(own):
            pass


def test_device_run_holds_the_folder_for_its_life_and_a_second_is_refused_before_touching_state(tmp_path, capsys,
                                                                                                monkeypatch):
    """`fedge device run` twice on one config: the second exits 1 (its supervisor tries again)
    with one line naming the folder, and reads or writes no state file (here: no standardization
    record). The device's loop is replaced: what runs inside the lock is not this test's."""
    import fedge.edge_runtime.run as run

    np.savez(tmp_path / "data.npz", x_train=np.zeros((4, 3)), y_train=np.zeros(4, np.int64),
             x_test=np.zeros((2, 3)), y_test=np.zeros(2, np.int64))
    (tmp_path / "device.toml").write_text(f'device_id = "pi-a"\nstate_dir = "{tmp_path / "state"}"\n'
                                          f'[data]\nnpz = "{tmp_path / "data.npz"}"\n')
    own = tmp_path / "state" / "pi-a"
    seen = []

    def loop_while_running(cfg, held) -> int:
        assert held == own
        with pytest.raises(ServiceUnavailable, match=re.escape(_refusal(own))):  # what a second `device run` meets now
            with device_lock(own):
                pass
        seen.append(cfg.device_id)
        return 0

    monkeypatch.setattr(run, "_run", loop_while_running)
    assert main(["device", "run", "--config", str(tmp_path / "device.toml")]) == 0
    assert seen == ["pi-a"]
    capsys.readouterr()
    with device_lock(own):  # the first device, still running
        assert main(["device", "run", "--config", str(tmp_path / "device.toml")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ServiceUnavailable" in err and _refusal(own) in err
    assert seen == ["pi-a"]  # the second never ran
    assert sorted(p.name for p in own.iterdir()) == [DEVICE_LOCK_FILE]  # nothing of the state touched


def test_a_link_or_fifo_at_the_lock_name_is_refused_and_a_foreign_file_is_not_overwritten(tmp_path):
    """The holder truncates the lock file to write its pid: a link planted at its name would have
    had its target emptied, a FIFO would have blocked the open, and a file by that name that fedge
    did not write would have lost its content."""
    own = tmp_path / "pi-a"
    own.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (own / DEVICE_LOCK_FILE).symlink_to(target)
    with pytest.raises(ConfigError, match="cannot open its lock file"):
        with device_lock(own):
            pass
    assert target.read_text() == "keep me\n"
    (own / DEVICE_LOCK_FILE).unlink()
    os.mkfifo(own / DEVICE_LOCK_FILE)
    with pytest.raises(ConfigError, match="not a regular file"):
        with device_lock(own):
            pass
    (own / DEVICE_LOCK_FILE).unlink()
    (own / DEVICE_LOCK_FILE).write_text("someone's notes\n")
    with device_lock(own):
        pass
    assert (own / DEVICE_LOCK_FILE).read_text() == "someone's notes\n"


@pytest.mark.parametrize("before", ["", "99999999\n"])
def test_an_empty_or_older_holders_lock_file_ends_up_holding_exactly_our_pid(tmp_path, before):
    """An older fedge left the lock file empty; a longer pid than ours must not leave digits behind
    (a refusal would then name no pid, or a wrong one)."""
    own = tmp_path / "pi-a"
    own.mkdir()
    (own / DEVICE_LOCK_FILE).write_text(before)
    with device_lock(own):
        assert (own / DEVICE_LOCK_FILE).read_text() == f"{os.getpid()}\n"


def test_a_hard_link_at_the_lock_name_keeps_its_other_name_intact(tmp_path):
    own = tmp_path / "pi-a"
    own.mkdir()
    other = tmp_path / "other"
    other.write_text("")
    os.link(other, own / DEVICE_LOCK_FILE)
    with device_lock(own):
        pass
    assert other.read_text() == ""


def test_a_child_forked_by_the_holder_does_not_keep_the_lock_after_the_holder_dies(tmp_path):
    """The coordinator's unmask workers are forked: they outlived a holder killed with -9 and kept
    its lock, so the restart was refused."""
    own = tmp_path / "pi-a"
    own.mkdir()
    # The child says so once os.fork() returned in it, that is after the at-fork hooks ran: killing
    # the holder before that raced the child's close (3 failures in 60 runs).
    script = _HOLDER.replace('print("held", flush=True)', 'import os\n    child = os.fork()\n    if child == 0:\n'
                             '        os.write(1, b"child\\n"); time.sleep(60); os._exit(0)\n'
                             '    os.write(1, f"held {child}\\n".encode())')  # one write each: lines never interleave
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    holder = subprocess.Popen([sys.executable, "-c", script, str(own)], stdout=subprocess.PIPE, text=True, env=env)
    child = None
    try:
        lines = sorted(holder.stdout.readline().split() for _ in range(2))  # "child" and "held <pid>"
        assert lines[0] == ["child"] and lines[1][0] == "held"
        child = int(lines[1][1])
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        with device_lock(own):  # the child lives on, without the lock
            os.kill(child, 0)
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
