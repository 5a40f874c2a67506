"""Edges of the portable train step (models/graphs.py) that the mutation8-build audit found no
test reaching: the activations' derivative exactly at 0 (torch: ReLU'(0) = 0, LeakyReLU'(0) =
the slope), and the gradient through a LoRA layer's A into a trainable layer below it. Oracles:
the gradient worked by hand in numpy, and float64 central differences of the loss."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

pytest.importorskip("onnx")

from fedge.edge_runtime.kernel.manifest import load_manifest  # noqa: E402
from fedge.edge_runtime.trainer.base import StepHyper  # noqa: E402
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen  # noqa: E402
from fedge.edge_runtime.trainer.portable import PortableBackend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.spec import mlp_spec  # noqa: E402


def _gradients(spec, tmp_path, params, z, y):
    """One SGD step at lr 1, nothing else: P - P.new is the portable graph's gradient."""
    build_artifacts(spec, tmp_path, ort_training=False)
    manifest = load_manifest(tmp_path)
    backend = PortableBackend(tmp_path, manifest, "sgd")
    backend.start(params, None, {p.name: params[p.name] for p in manifest.by_role("shared")}, None)
    backend.step(z, y, StepHyper(lr=1.0))
    new, _ = backend.current()
    return manifest, {k: params[k].astype(np.float64) - new[k] for k in params}


@pytest.mark.parametrize("activation,slope", [("relu", 0.0), ("leaky_relu", 0.3)])
def test_the_activations_derivative_at_exactly_zero_is_torchs(tmp_path, activation, slope):
    """fc1's weight and bias are 0, so its pre-activation is exactly 0 on every row: its gradient
    is slope * dh, with dh = dlogits @ W_head^T and dlogits = (softmax(b_head) - onehot) / N."""
    rng = np.random.default_rng(5)
    spec = mlp_spec(4, 3, hidden=(5,), modes=("shared",), head="global")
    spec = replace(spec, layers=(replace(spec.layers[0], activation=activation, negative_slope=slope or 0.01),))
    head_w = rng.normal(size=(5, 3)).astype(np.float32)
    head_b = rng.normal(size=3).astype(np.float32)
    params = {"fc1.weight": np.zeros((4, 5), np.float32), "fc1.bias": np.zeros(5, np.float32),
              "head_global.weight": head_w, "head_global.bias": head_b}
    z, y = rng.normal(size=(6, 4)).astype(np.float32), np.array([0, 1, 2, 0, 1, 2])
    _, grads = _gradients(spec, tmp_path, params, z, y)
    p = np.exp(head_b - head_b.max()) / np.exp(head_b - head_b.max()).sum()  # every row's logits are b_head
    dlogits = (np.tile(p, (6, 1)) - np.eye(3)[y]) / 6
    dpre = slope * (dlogits @ head_w.T)  # (6, 5): the derivative at 0 is the slope (0 for ReLU)
    np.testing.assert_allclose(grads["fc1.bias"], dpre.sum(axis=0), atol=1e-6)
    np.testing.assert_allclose(grads["fc1.weight"], z.T.astype(np.float64) @ dpre, atol=1e-6)


def test_the_gradient_reaches_a_trainable_layer_below_a_lora_layer_through_a(tmp_path):
    """fc1 (shared) feeds fc2 (LoRA, B nonzero): dL/dh1 takes both W2 and (scale) A B; the graph's
    fc1 gradient against central differences of the float64 loss."""
    rng = np.random.default_rng(6)
    spec = mlp_spec(4, 3, hidden=(5, 4), modes=("shared", "lora"), head="global", lora_rank=2, lora_alpha=6.0)
    build_artifacts(spec, tmp_path / "init", ort_training=False)
    with np.load(tmp_path / "init" / "params_init.npz") as init:
        frozen_and_init = {k: init[k] for k in init.files}
    params = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in frozen_and_init.items()
              if k not in ("fc2.weight", "fc2.bias")}
    assert np.abs(params["fc2.lora_b"]).min() > 0  # B = 0 would make the path through A carry nothing
    z, y = rng.normal(size=(7, 4)).astype(np.float32), rng.integers(0, 3, 7)
    manifest, grads = _gradients(spec, tmp_path / "built", params, z, y)
    model = NumpyModel(manifest.spec, load_frozen(tmp_path / "built", manifest), dtype=np.float64)
    at = {k: v.astype(np.float64) for k, v in params.items()}
    eps = 1e-6
    for name in ("fc1.weight", "fc1.bias"):
        numeric = np.zeros_like(at[name])
        for idx in np.ndindex(at[name].shape):
            plus, minus = {**at, name: at[name].copy()}, {**at, name: at[name].copy()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric[idx] = (model.loss_and_grads(plus, z.astype(np.float64), y)[0]
                            - model.loss_and_grads(minus, z.astype(np.float64), y)[0]) / (2 * eps)
        np.testing.assert_allclose(grads[name], numeric, atol=1e-4, rtol=1e-3, err_msg=name)
