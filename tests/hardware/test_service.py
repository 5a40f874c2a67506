"""The device as a service: the shipped systemd unit passes `systemd-analyze verify`, the
install script works on a scratch root (and keeps what it finds), and SIGHUP reloads the data."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.device_config import load_device_config
from fedge.edge_runtime.eligibility import EligibilityPolicy
from fedge.edge_runtime.logs import JournaldFormatter
from fedge.edge_runtime.run import install_reload
from tests.coordinator.fleet import local_data
from tests.tiny_model import build_tiny_model

HARDWARE = Path(__file__).resolve().parents[2] / "hardware"
UNIT = HARDWARE / "systemd" / "fedge-device.service"
FEDGE = Path(sys.executable).with_name("fedge")  # this environment's fedge: ExecStart must exist
COORDINATOR_UNIT = HARDWARE / "systemd" / "fedge-coordinator.service"


def _verify(unit: Path) -> subprocess.CompletedProcess:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze missing: apt-get install -y systemd (.ci/run installs it)")
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def _unit_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_shipped_unit_verifies_and_is_hardened(tmp_path):
    unit = tmp_path / "fedge-device.service"
    unit.write_text(UNIT.read_text().replace("@FEDGE@", str(FEDGE)))
    done = _verify(unit)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    keys = _unit_lines(unit.read_text())
    assert keys["User"] == "fedge" and keys["ProtectSystem"] == "strict" and keys["Restart"] == "on-failure"
    assert keys["NoNewPrivileges"] == "yes" and keys["CapabilityBoundingSet"] == ""
    assert "--log-format journald" in keys["ExecStart"] and "HUP" in keys["ExecReload"]
    assert keys["RestartForceExitStatus"] == "SIGHUP"  # a reload before the handler is set is no clean stop
    # The check has teeth: a unit whose binary is missing fails it.
    unit.write_text(UNIT.read_text().replace("@FEDGE@", str(tmp_path / "no-such-fedge")))
    assert _verify(unit).returncode != 0


def test_coordinator_unit_verifies_and_does_not_restart_on_a_spent_budget(tmp_path):
    from fedge.coordinator.service import EXIT_PRIVACY_BUDGET
    from fedge.tools.cli import EXIT_ERROR

    unit = tmp_path / "fedge-coordinator.service"
    unit.write_text(COORDINATOR_UNIT.read_text().replace("@FEDGE@", str(FEDGE)))
    done = _verify(unit)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
    keys = _unit_lines(unit.read_text())
    # The exits a restart cannot fix are the service's own constants, not numbers copied by hand.
    assert set(keys["RestartPreventExitStatus"].split()) == {str(EXIT_ERROR), str(EXIT_PRIVACY_BUDGET)}
    assert keys["Restart"] == "on-failure" and "mosquitto.service" in keys["After"]
    assert "HUP" in keys["ExecReload"] and keys["RestartForceExitStatus"] == "SIGHUP"  # see the device unit's
    assert keys["ProtectSystem"] == "strict" and keys["StateDirectory"].split() == [
        keys["WorkingDirectory"].rsplit("/", 1)[1], "fedge-coordinator-rescued"]  # state_file._rescue_folders
    assert "coordinator serve --config /etc/fedge/coordinator.toml" in keys["ExecStart"]


def _scratch_root(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "etc" / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc" / "gshadow").write_text("root:*::\n")
    return root


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd")
def test_install_script_on_a_scratch_root(tmp_path):
    root = _scratch_root(tmp_path / "root")
    cmd = ["sh", str(HARDWARE / "install-device.sh"), "--root", str(root), "--fedge", str(FEDGE), "--id", "pi-7",
           "--broker", "mqtts://coord.lan:8883"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    user = [line.split(":") for line in (root / "etc/passwd").read_text().splitlines() if line.startswith("fedge:")]
    assert len(user) == 1 and user[0][5] == "/var/lib/fedge" and user[0][6].endswith("nologin")
    uid, gid = int(user[0][2]), int(user[0][3])
    state, conf = root / "var/lib/fedge", root / "etc/fedge/device.toml"
    assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (uid, 0o700)
    assert (conf.stat().st_gid, conf.stat().st_mode & 0o777) == (gid, 0o640)
    cfg = load_device_config(conf)  # the commented template loads as written
    assert (cfg.device_id, cfg.broker.url, cfg.state_dir) == ("pi-7", "mqtts://coord.lan:8883", "/var/lib/fedge")
    unit = root / "etc/systemd/system/fedge-device.service"
    assert _unit_lines(unit.read_text())["ExecStart"].startswith(f"{FEDGE} ")
    done = _verify(unit)
    assert done.returncode == 0, done.stdout + done.stderr

    conf.write_text(conf.read_text().replace('"pi-7"', '"pi-edited"', 1))  # the user's edit
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert load_device_config(conf).device_id == "pi-edited"  # a second run keeps it
    assert sum(line.startswith("fedge:") for line in (root / "etc/passwd").read_text().splitlines()) == 1
    assert again.stderr == ""  # the unit is the shipped one: nothing to say

    # What the operator changed since is theirs: a unit edit, a folder's owner and mode.
    unit.write_text(unit.read_text() + "# the operator's drop-in\n")
    state.chmod(0o750)
    os.chown(state, 0, 0)
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stderr
    assert unit.read_text().endswith("# the operator's drop-in\n") and "kept " in third.stderr
    assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (0, 0o750)
    assert "not owned by fedge" in third.stderr  # kept, and the operator told what it costs


def test_device_init_writes_a_commented_config_that_loads(tmp_path, capsys):
    from fedge.tools.cli import main

    out = tmp_path / "device.toml"
    assert main(["device", "init", "--out", str(out), "--id", "jetson-3", "--data", str(tmp_path / "d.npz")]) == 0
    text = out.read_text()
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 10
    cfg = load_device_config(out)
    assert cfg.device_id == "jetson-3" and cfg.eligibility == EligibilityPolicy()  # the defaults, as shown
    out.write_text("# mine\n")
    assert main(["device", "init", "--out", str(out)]) == 2  # never replaces the user's file
    assert out.read_text() == "# mine\n" and "--force" in capsys.readouterr().err


def test_journald_format_has_priority_and_no_timestamp():
    fmt = JournaldFormatter()
    record = logging.LogRecord("fedge.device", logging.WARNING, __file__, 1, "round %d declined", (3,), None)
    assert fmt.format(record) == "<4>fedge.device: round 3 declined"
    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("fedge.device", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    line = fmt.format(record)
    assert line.startswith("<3>fedge.device: boom | Traceback") and "\n" not in line


def test_sighup_reloads_the_local_data(tmp_path, caplog):
    art, manifest, _ = build_tiny_model(tmp_path / "art")
    rng = np.random.default_rng(0)
    runtime = DeviceRuntime("pi-1", local_data(rng, 20), {manifest.model_id: art}, tmp_path / "state")
    old_z = runtime.model(manifest.model_id).embed(runtime.data.x_train, cache_key=0)
    new = local_data(rng, 33)
    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=new.x_train, y_train=new.y_train, x_test=new.x_test, y_test=new.y_test)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        install_reload(SimpleNamespace(runtime=runtime, check_in_soon=lambda: None), str(npz))
        with caplog.at_level(logging.INFO, logger="fedge.device"):
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 10
            while len(runtime.data.y_train) != 33 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert np.array_equal(runtime.data.x_train, new.x_train)
            assert runtime.check_in().num_examples == 33
            z = runtime.model(manifest.model_id).embed(runtime.data.x_train, cache_key=0)
            assert z.shape[0] == 33 != old_z.shape[0]  # not the cached embedding of the old data
            npz.write_bytes(b"half-copied")  # a broken file keeps the old data
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 10
            while "kept the old data" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.01)
        assert "kept the old data" in caplog.text and len(runtime.data.y_train) == 33
    finally:
        signal.signal(signal.SIGHUP, previous)
