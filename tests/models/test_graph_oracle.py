"""Oracle tests for the portable train-step graph.

Chain of evidence: the numpy reference's gradients match float64 central finite differences
(an independent oracle), and the ONNX graph's gradients and optimizer steps match the numpy
reference to 1e-5. Optimizer rules are also checked against hand-derived closed forms.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.edge_runtime.kernel.manifest import load_manifest
from fedge.edge_runtime.trainer.base import StepHyper, fresh_optimizer_state
from fedge.edge_runtime.trainer.numpy_ref import NumpyBackend, NumpyModel, apply_optimizer, load_frozen
from fedge.edge_runtime.trainer.portable import PortableBackend, make_session
from fedge.models.build import build_artifacts
from fedge.models.spec import load_spec, mlp_spec

SPECS = {
    "mlp-lora-shared-personal": mlp_spec(13, 4, hidden=(9, 7), modes=("lora", "shared"), lora_rank=3, lora_alpha=5.0),
    "mlp-frozen-personal": mlp_spec(11, 3, hidden=(6, 5), modes=("frozen", "personal"), head="global"),
    "cnn-8-lora": load_spec("cnn-8-lora"),
    # FFA-LoRA: A frozen at its init, only B (and the head) trained and shared
    "mlp-lora-frozen-a": replace(mlp_spec(10, 3, hidden=(8, 6), modes=("frozen", "lora"), lora_rank=2),
                                 lora_train_a=False),
}


def _gelu_leaky() -> object:
    """GELU and LeakyReLU(0.3) layers, both trained (an imported torch or Keras MLP's)."""
    spec = mlp_spec(12, 4, hidden=(9, 7), modes=("lora", "shared"), lora_rank=3)
    return replace(spec, layers=(replace(spec.layers[0], activation="gelu"),
                                 replace(spec.layers[1], activation="leaky_relu", negative_slope=0.3)))


SPECS["mlp-gelu-leaky"] = _gelu_leaky()


@pytest.fixture(scope="module", params=sorted(SPECS))
def built(request, tmp_path_factory):
    d = tmp_path_factory.mktemp(request.param)
    build_artifacts(SPECS[request.param], d, ort_training=False)
    return d, load_manifest(d)


def _batch(d, manifest, rng, n=7):
    spec = manifest.spec
    x = rng.uniform(size=(n, *manifest.input_shape)).astype(np.float32)  # pixel-like inputs in [0, 1)
    if (d / "backbone.onnx").exists():
        z = make_session(d / "backbone.onnx").run(["z"], {"x": x})[0]
    else:
        z = x.reshape(n, -1)
    return z, rng.integers(0, spec["num_classes"], n)


def assert_close(actual, expected, name, tol=1e-5):
    """Max abs error <= tol * max(1, max |expected|): 1e-5 at float32 resolution."""
    scale = max(1.0, float(np.max(np.abs(expected))) if np.size(expected) else 1.0)
    err = float(np.max(np.abs(np.asarray(actual, np.float64) - expected))) if np.size(expected) else 0.0
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol * scale:.3g}"


def _params(d, manifest, rng):
    with np.load(d / "params_init.npz") as init:
        # Perturb so LoRA B is nonzero and every gradient path is exercised; the noise has
        # the init's scale (1/sqrt(fan_in)) so losses stay in a realistic range.
        return {
            p.name: (init[p.name] + rng.normal(size=p.shape) / np.sqrt(p.shape[0])).astype(np.float32)
            for p in manifest.trainable
        }


def test_numpy_reference_gradients_match_finite_differences(built):
    d, manifest = built
    rng = np.random.default_rng(1)
    z, y = _batch(d, manifest, rng)
    model = NumpyModel(manifest.spec, load_frozen(d, manifest), dtype=np.float64)
    params = {k: v.astype(np.float64) for k, v in _params(d, manifest, rng).items()}
    _, grads = model.loss_and_grads(params, z.astype(np.float64), y)
    eps = 1e-6
    for name, value in params.items():
        for flat in rng.choice(value.size, size=min(6, value.size), replace=False):
            idx = np.unravel_index(flat, value.shape)
            plus, minus = {k: v.copy() for k, v in params.items()}, {k: v.copy() for k, v in params.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            numeric = (model.loss_and_grads(plus, z, y)[0] - model.loss_and_grads(minus, z, y)[0]) / (2 * eps)
            assert grads[name][idx] == pytest.approx(numeric, abs=1e-6, rel=1e-5), name


def test_portable_gradients_match_reference(built):
    """With SGD, lr=1 and everything else 0, one step gives P - grad: read the gradient off."""
    d, manifest = built
    rng = np.random.default_rng(2)
    z, y = _batch(d, manifest, rng)
    params = _params(d, manifest, rng)
    anchor = {p.name: params[p.name] for p in manifest.by_role("shared")}
    portable = PortableBackend(d, manifest, "sgd")
    portable.start(params, None, anchor, None)
    loss = portable.step(z, y, StepHyper(lr=1.0))
    new, _ = portable.current()
    ref_loss, grads = NumpyModel(manifest.spec, load_frozen(d, manifest)).loss_and_grads(params, z, y)
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-5)
    assert set(grads) == set(params)
    for name in params:
        assert_close(params[name].astype(np.float64) - new[name], grads[name], name)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_portable_optimizer_steps_match_reference(built, optimizer):
    d, manifest = built
    rng = np.random.default_rng(3)
    params = _params(d, manifest, rng)
    shared = [p.name for p in manifest.by_role("shared")]
    anchor = {k: params[k] + 0.1 * rng.normal(size=params[k].shape).astype(np.float32) for k in shared}
    correction = {k: 0.05 * rng.normal(size=params[k].shape).astype(np.float32) for k in shared}
    hyper = StepHyper(lr=0.03, weight_decay=0.01, mu=0.2, momentum=0.9)
    a, b = PortableBackend(d, manifest, optimizer), NumpyBackend(d, manifest, optimizer)
    for backend in (a, b):
        backend.start(params, None, anchor, correction)
    for _ in range(3):
        z, y = _batch(d, manifest, rng)
        assert a.step(z, y, hyper) == pytest.approx(b.step(z, y, hyper), rel=1e-5, abs=1e-5)
    (pa, sa), (pb, sb) = a.current(), b.current()
    for name in pa:
        assert_close(pa[name], pb[name], name)
    for name in sa:
        if name.endswith("exp_avg_sq"):  # enters the update as sqrt(v): compare on that scale
            assert_close(np.sqrt(sa[name]), np.sqrt(sb[name]), name)
        else:
            assert_close(sa[name], sb[name], name)


def test_prox_and_correction_enter_the_gradient_exactly(built):
    """g_total = g + mu (P - P_global) + c: compare two SGD steps that differ only there."""
    d, manifest = built
    shared = [p.name for p in manifest.by_role("shared")]
    rng = np.random.default_rng(4)
    z, y = _batch(d, manifest, rng)
    params = _params(d, manifest, rng)
    anchor = {k: np.zeros_like(params[k]) for k in shared}
    correction = {k: rng.normal(size=params[k].shape).astype(np.float32) for k in shared}
    plain, prox = PortableBackend(d, manifest, "sgd"), PortableBackend(d, manifest, "sgd")
    plain.start(params, None, anchor, None)
    prox.start(params, None, anchor, correction)
    plain.step(z, y, StepHyper(lr=1.0))
    prox.step(z, y, StepHyper(lr=1.0, mu=0.5))
    (p0, _), (p1, _) = plain.current(), prox.current()
    for name in params:
        extra = 0.5 * params[name] + correction[name] if name in shared else 0.0
        assert_close(p0[name].astype(np.float64) - p1[name], np.broadcast_to(extra, p0[name].shape), name)


def test_optimizer_rules_against_closed_forms():
    """torch semantics, derived by hand: SGD momentum over two steps; AdamW's first step."""
    g1, g2, p = np.array([0.5, -2.0]), np.array([1.0, 1.0]), np.array([1.0, 1.0])
    h = StepHyper(lr=0.1, momentum=0.9, weight_decay=0.01)
    params, state = {"w": p.copy()}, {"w.momentum_buffer": np.zeros(2)}
    apply_optimizer("sgd", params, {"w": g1}, state, h)
    buf1 = g1 + 0.01 * p
    p1 = p - 0.1 * buf1
    apply_optimizer("sgd", params, {"w": g2}, state, h)
    buf2 = 0.9 * buf1 + g2 + 0.01 * p1
    np.testing.assert_allclose(params["w"], p1 - 0.1 * buf2)

    h = StepHyper(lr=0.1, weight_decay=0.5, eps=1e-8)
    params, state = {"w": p.copy()}, {"w.exp_avg": np.zeros(2), "w.exp_avg_sq": np.zeros(2), "step": np.zeros(())}
    apply_optimizer("adamw", params, {"w": g1}, state, h)
    # First step: m_hat = g, v_hat = g^2, so the Adam part is lr * sign(g) (up to eps).
    np.testing.assert_allclose(params["w"], p * (1 - 0.1 * 0.5) - 0.1 * np.sign(g1), atol=1e-7)
    assert float(state["step"]) == 1.0


def test_fresh_state_covers_every_trainable_param(built):
    d, manifest = built
    for optimizer, per_param in (("sgd", 1), ("adamw", 2)):
        state = fresh_optimizer_state(manifest, optimizer)
        assert len([k for k in state if k != "step"]) == per_param * len(manifest.trainable)
