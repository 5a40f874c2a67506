"""What device_task.py trains on, built on the host (building graphs needs onnx, which a device
install does not have), and how its results are read and compared across machines."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np

DEVICE_TASK = Path(__file__).with_name("device_task.py")


def write_task_inputs(folder: Path) -> str:
    """folder/{device_task.py, art/, data.npz}: the portable artifacts of a small LoRA MLP (no
    ORT training artifacts: a device runs stock onnxruntime) and 60 examples of 3 classes.
    Returns the model id."""
    from fedge.models.build import build_artifacts
    from fedge.models.spec import mlp_spec

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(DEVICE_TASK, folder / DEVICE_TASK.name)
    manifest = build_artifacts(mlp_spec(10, 3, hidden=(8,), modes=("lora",)), folder / "art", ort_training=False)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 10)).astype(np.float32), rng.integers(0, 3, 60)
    np.savez(folder / "data.npz", x_train=x[:48], y_train=y[:48], x_test=x[48:], y_test=y[48:])
    return manifest.model_id


def task_argv(python: str, folder: str, model_id: str, state: str = "state") -> list[str]:
    """The command that runs the task; folder as the running Python sees it (a guest path)."""
    return [python, f"{folder}/{DEVICE_TASK.name}", f"{folder}/art", f"{folder}/{state}", model_id,
            f"{folder}/data.npz"]


def task_result(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def max_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between two results' losses and update values."""
    assert sorted(a["update"]) == sorted(b["update"]), (sorted(a["update"]), sorted(b["update"]))
    gaps = [abs(a["loss"] - b["loss"])]
    gaps += [float(np.max(np.abs(np.subtract(a["update"][name], b["update"][name])))) for name in a["update"]]
    return max(gaps)
