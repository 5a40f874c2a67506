"""The device's local run written out, shared by test_fedprox_gradient.py and
test_scaffold_device.py: the backends to test (BACKENDS), the tiny MLP with ORT training
artifacts where they can be built (`build_model`, for each module's `model` fixture), a
device's data and tasks (`_data`, `_task`), and `_hand_sgd`, the oracle: the same batches in
plain SGD, one float64 step at a time."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.device import LocalData, _stable_int
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TrainTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.trainer import available_backends
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec
from tests.tiny_model import CLASSES, FEATURES

BACKENDS = [b for b in ("numpy", "portable", "ort-training") if b in available_backends()]
EXACT = CompressionSpec(quant_bits=32, error_feedback=False)


def build_model(directory):
    """(artifact dir, manifest, ModelRuntime) for the tiny MLP of tests/tiny_model.py, with ORT
    training artifacts where they can be built."""
    spec = mlp_spec(FEATURES, CLASSES, hidden=(8,), modes=("lora",), lora_rank=2)
    manifest = build_artifacts(spec, directory, ort_training="ort-training" in BACKENDS)
    return directory, manifest, ModelRuntime(directory, expected_model_id=manifest.model_id)


def _data(seed=5, n=20):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n + 4, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, n + 4)
    return LocalData(x[:n], y[:n], x[n:], y[n:])


def _task(model, shared, hyper, round_id=1, correction=None, compression=EXACT):
    _, manifest, _ = model
    return TrainTask(round_id=round_id, task_id=f"t{round_id}", device_id="dev", model_id=manifest.model_id,
                     model_version=round_id - 1, params=encode_dense(shared), hyper=hyper, compression=compression,
                     seed=40 + round_id, correction=b"" if correction is None else encode_dense(correction))


def _hand_sgd(model, device, task, shared, personal, correction, mu):
    """The device's local run written out: same batches, plain SGD, grad = dCE + mu (w - x) + correction.
    Returns (final params, mean of the K raw gradients of the shared params, K)."""
    d, manifest, runtime = model
    net = NumpyModel(manifest.spec, load_frozen(d, manifest), dtype=np.float64)
    hyper = task.hyper
    rng = np.random.default_rng([_stable_int(device.device_id), task.seed, task.round_id, device.seed])
    z, y = runtime.embed(device.data.x_train), device.data.y_train
    w = {k: v.astype(np.float64) for k, v in {**shared, **personal}.items()}
    raw_sum = {k: np.zeros_like(w[k]) for k in shared}
    steps = 0
    for _ in range(hyper.epochs):
        order = rng.permutation(len(y))
        for b in range(-(-len(y) // hyper.batch_size)):
            idx = order[b * hyper.batch_size:(b + 1) * hyper.batch_size]
            _, g = net.loss_and_grads(w, z[idx], y[idx])
            for k in shared:
                g[k] = g[k] + mu * (w[k] - shared[k])
                raw_sum[k] += g[k]
                g[k] = g[k] + correction[k]
            for k in w:
                w[k] = w[k] - hyper.lr * g[k]
            steps += 1
    return w, {k: v / steps for k, v in raw_sum.items()}, steps
