"""The built wheel (not the editable checkout) installs everything under `fedge.` and leaves
its users' own top-level names alone: a project with its own `models/` package imports both."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.packaging.task_inputs import task_argv, task_result, write_task_inputs

TOPS = ("edge_runtime", "coordinator", "models", "tools", "hardware")


def test_the_wheel_holds_only_the_fedge_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"fedge"}, tops
    for top in TOPS:
        assert any(n.startswith(f"fedge/{top}/") for n in names), top
    assert "fedge/models/specs/mnist-mlp-lora.toml" in names
    assert "fedge/hardware/profiles/pi4-ups.toml" in names
    assert "fedge/tools/broker/files/fedge.acl" in names
    assert not any(n.startswith("fedge/__init__") for n in names)  # a namespace package


def test_installed_wheel_imports_next_to_a_users_own_models_package(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    with zipfile.ZipFile(wheel) as whl:  # what pip does for a pure wheel: unpack into site-packages
        whl.extractall(site)
    # The dependencies (numpy, msgpack, ...) from this test environment, as a plain path: a
    # .pth line adds the folder but runs none of its .pth files, so the editable fedge
    # installed there stays out of sight.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text("")
    (project / "models" / "spec.py").write_text("WHO = 'the user'\n")
    (project / "tools").mkdir()
    (project / "tools" / "__init__.py").write_text("MINE = True\n")
    code = textwrap.dedent("""
        import fedge.models.spec, fedge.edge_runtime.kernel.protocol, fedge.coordinator.server
        import fedge.tools.cli, fedge.tools.simulate.profiles
        import models.spec, tools
        assert models.spec.WHO == 'the user' and tools.MINE
        assert '/site-packages/fedge/' in fedge.models.spec.__file__, fedge.models.spec.__file__
        assert fedge.tools.simulate.profiles.load_profile('pi4-ups').name
        for name in ('edge_runtime', 'coordinator', 'hardware'):
            try:
                __import__(name)
            except ModuleNotFoundError:
                pass
            else:
                raise AssertionError(name + ' is importable as a top-level name')
        print('ok')
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    result = subprocess.run([str(py), "-c", code], cwd=project, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


@pytest.mark.slow
def test_the_wheel_with_only_the_device_extra_probes_and_trains(wheel, tmp_path):
    """What the README tells a device owner: pip install the wheel with [device] into a fresh
    venv (pip resolves onnxruntime, paho-mqtt, psutil, msgpack, numpy), then `fedge device
    probe` and one real training task with the portable backend."""
    venv = tmp_path / "device-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[device]"], check=True, timeout=600, env=env)
    probe = subprocess.run([str(venv / "bin" / "fedge"), "device", "probe", "--json"], capture_output=True, text=True,
                           timeout=120, env=env, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert '"eligible"' in probe.stdout
    model_id = write_task_inputs(tmp_path / "task")
    run = subprocess.run(task_argv(str(venv / "bin" / "python"), str(tmp_path / "task"), model_id),
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    result = task_result(run)
    assert result["importable"] == [], f"{result['importable']} installed on the device"
    assert np.isfinite(result["loss"])
