"""The check every import test of a graph no one here wrote ends with: the imported tail trained
on every backend (portable, and ORT training where the build has it) from the same start agrees
with a float64 numpy reference to TOL = 1e-5 (`check_backends_agree`), with the step settings it
uses (STEPS, BATCH, HYPER: plain SGD, what ort-training's SGD runs); and the digits as 1x8x8
images (`_digits_images`). Used by test_import_torch.py, test_import_sklearn_rapidocr.py,
test_import_torch_variants.py and test_import_sklearn_linear.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.errors import BackendUnavailable
from fedge.edge_runtime.kernel.manifest import load_manifest
from fedge.edge_runtime.kernel.ort_loader import load_ort_training
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.trainer import make_backend
from fedge.edge_runtime.trainer.base import StepHyper
from fedge.edge_runtime.trainer.numpy_ref import NumpyBackend

TOL = 1e-5
STEPS, BATCH = 12, 16
HYPER = StepHyper(lr=0.1)  # plain SGD: what ort-training's SGD runs
try:
    load_ort_training("api")
    HAVE_ORT_TRAINING = True
except BackendUnavailable:
    HAVE_ORT_TRAINING = False


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(np.asarray(a[k], np.float64) - b[k]).max()) for k in a)


def train(backend, init: dict, batches) -> dict:
    backend.start(init, None, init, None)
    for i in range(STEPS):
        backend.step(*batches[i % len(batches)], HYPER)
    return backend.current()[0]


def check_backends_agree(art: Path, x: np.ndarray, y: np.ndarray) -> dict:
    """Train the imported tail on every backend from the same start; return the reference's params."""
    manifest = load_manifest(art)
    runtime = ModelRuntime(art, expected_model_id=manifest.model_id)
    z = runtime.embed(x)
    batches = [(z[i:i + BATCH], y[i:i + BATCH]) for i in range(0, len(z), BATCH)]
    init = {**runtime.initial("shared"), **runtime.initial("personal")}
    exact = train(NumpyBackend(art, manifest, "sgd", dtype=np.float64), init, batches)
    assert max_diff(exact, init) > 100 * TOL  # it did train
    names = ["portable"] + (["ort-training"] if HAVE_ORT_TRAINING else [])
    for name in names:
        got = train(make_backend(name, art, manifest, "sgd"), init, batches)
        assert max_diff(got, exact) < TOL, name
    return exact


def _digits_images(n: int):
    from fedge.tools.datasets import load_digits

    x, y = load_digits()
    return x[:n].reshape(-1, 1, 8, 8), y[:n]
