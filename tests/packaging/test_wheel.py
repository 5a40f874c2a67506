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

REPO = Path(__file__).resolve().parents[2]
TOPS = ("edge_runtime", "coordinator", "models", "tools", "hardware")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    build = tmp_path_factory.mktemp("build")
    # --no-build-isolation: setuptools and wheel come from the test environment ([test] extra),
    # so the build needs no network (pip builds in the tree: build/ and *.egg-info are ignored).
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, cwd=build, env=env, timeout=300)
    (found,) = out.glob("fedge-*.whl")
    return found


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


DEVICE_TASK = textwrap.dedent("""
    import sys
    import numpy as np
    from fedge.edge_runtime.device import DeviceRuntime, LocalData
    from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, TrainTask, Update
    from fedge.edge_runtime.kernel.update_codec import encode_dense
    from fedge.edge_runtime.model_runtime import ModelRuntime
    art, state, model_id = sys.argv[1:4]
    data = np.load(sys.argv[4])
    device = DeviceRuntime("devA", LocalData(data["x_train"], data["y_train"], data["x_test"], data["y_test"]),
                           {model_id: art}, state, seed=1)
    shared = ModelRuntime(art).initial("shared")
    task = TrainTask(round_id=1, task_id="t1", device_id="devA", model_id=model_id, model_version=0,
                     params=encode_dense(shared), hyper=TaskHyper(epochs=2, batch_size=8, lr=0.1),
                     compression=CompressionSpec(), seed=3)
    reply = device.handle_task(task)
    assert isinstance(reply, Update), reply
    for absent in ("torch", "onnx"):
        try:
            __import__(absent)
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError(absent + " is installed on the device")
    print("loss", reply.metrics["loss"])
""")


@pytest.mark.slow
def test_the_wheel_with_only_the_device_extra_probes_and_trains(wheel, tmp_path):
    """What the README tells a device owner: pip install the wheel with [device] into a fresh
    venv (pip resolves onnxruntime, paho-mqtt, psutil, msgpack, numpy), then `fedge device
    probe` and one real training task with the portable backend."""
    from fedge.models.build import build_artifacts
    from fedge.models.spec import mlp_spec

    venv = tmp_path / "device-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", f"{wheel}[device]"], check=True, timeout=600, env=env)
    probe = subprocess.run([str(venv / "bin" / "fedge"), "device", "probe", "--json"], capture_output=True, text=True,
                           timeout=120, env=env, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    assert '"eligible"' in probe.stdout
    manifest = build_artifacts(mlp_spec(10, 3, hidden=(8,), modes=("lora",)), tmp_path / "art", ort_training=False)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 10)).astype(np.float32), rng.integers(0, 3, 60)
    np.savez(tmp_path / "data.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    run = subprocess.run([str(venv / "bin" / "python"), "-c", DEVICE_TASK, str(tmp_path / "art"),
                          str(tmp_path / "state"), manifest.model_id, str(tmp_path / "data.npz")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("loss"), run.stderr[-3000:]
