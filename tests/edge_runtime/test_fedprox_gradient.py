"""FedProx on the device, against an independent reference: the gradient every backend steps
along is that of F(w) = CE(w) + mu/2 ||w_shared - x||^2 + <c - c_i, w_shared>, checked against
central finite differences of F in float64 (SGD reads the gradient off one lr=1 step; AdamW's
first step against its closed form on the finite-difference gradient); and mu goes from the
config into the task. SCAFFOLD's client side: test_scaffold_device.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.edge_runtime.trainer import make_backend
from fedge.edge_runtime.trainer.base import StepHyper
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from tests.edge_runtime.local_run import BACKENDS, build_model
from tests.tiny_model import CLASSES, FEATURES


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny MLP of tests/tiny_model.py, with ORT training artifacts where they can be built."""
    return build_model(tmp_path_factory.mktemp("artifacts"))


def _point(model, seed):
    """Params away from init (LoRA's B is zero there), an anchor, a correction, a batch."""
    _, manifest, _ = model
    rng = np.random.default_rng(seed)
    params = {p.name: (0.5 * rng.normal(size=p.shape)).astype(np.float32) for p in manifest.trainable}
    shared = [p.name for p in manifest.by_role("shared")]
    anchor = {k: (params[k] + 0.3 * rng.normal(size=params[k].shape)).astype(np.float32) for k in shared}
    correction = {k: (0.2 * rng.normal(size=params[k].shape)).astype(np.float32) for k in shared}
    z = rng.normal(size=(16, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, 16)
    return params, anchor, correction, z, y


def _fd_gradient(model, params, anchor, correction, mu, z, y):
    """Central differences of F(w) = CE + mu/2 sum ||w - anchor||^2 + sum <correction, w>, float64."""
    d, manifest, _ = model
    net = NumpyModel(manifest.spec, load_frozen(d, manifest), dtype=np.float64)
    w = {k: v.astype(np.float64) for k, v in params.items()}

    def objective(w):
        value = net.loss_and_grads(w, z.astype(np.float64), y)[0]
        for k in anchor:
            value += 0.5 * mu * np.sum((w[k] - anchor[k]) ** 2) + np.sum(correction[k] * w[k])
        return value

    h, grads = 1e-6, {}
    for name, value in w.items():
        g = np.zeros_like(value)
        for idx in np.ndindex(value.shape):
            keep = value[idx]
            value[idx] = keep + h
            up = objective(w)
            value[idx] = keep - h
            down = objective(w)
            value[idx] = keep
            g[idx] = (up - down) / (2 * h)
        grads[name] = g
    return grads


@pytest.mark.parametrize("backend", BACKENDS)
def test_fedprox_sgd_gradient_matches_finite_differences(model, backend):
    d, manifest, _ = model
    params, anchor, correction, z, y = _point(model, 1)
    mu = 0.7
    want = _fd_gradient(model, params, anchor, correction, mu, z, y)
    trainer = make_backend(backend, d, manifest, "sgd")
    trainer.start(params, None, anchor, correction)
    trainer.step(z, y, StepHyper(lr=1.0, mu=mu))  # w' = w - grad F(w)
    new, _ = trainer.current()
    for name, value in params.items():
        got = value.astype(np.float64) - new[name]
        np.testing.assert_allclose(got, want[name], atol=2e-5, rtol=1e-4, err_msg=f"{backend} {name}")
    # The prox term really is there: without it the shared params would have moved differently.
    prox = {k: mu * (params[k].astype(np.float64) - anchor[k]) for k in anchor}
    assert max(np.abs(p).max() for p in prox.values()) > 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_fedprox_adamw_first_step_follows_the_closed_form(model, backend):
    """Step 1 of torch AdamW from zero moments: w' = w (1 - lr wd) - lr g / (|g| + eps)."""
    d, manifest, _ = model
    params, anchor, correction, z, y = _point(model, 2)
    mu, hyper = 0.4, StepHyper(lr=0.01, weight_decay=0.1, mu=0.4, eps=0.05)  # a large eps keeps |g| in the step
    g = _fd_gradient(model, params, anchor, correction, mu, z, y)
    trainer = make_backend(backend, d, manifest, "adamw")
    trainer.start(params, None, anchor, correction)
    trainer.step(z, y, hyper)
    new, _ = trainer.current()
    for name, value in params.items():
        want = value.astype(np.float64) * (1 - hyper.lr * hyper.weight_decay) - hyper.lr * g[name] / (
            np.abs(g[name]) + hyper.eps)
        np.testing.assert_allclose(new[name], want, atol=2e-6, rtol=1e-5, err_msg=f"{backend} {name}")


def test_fedprox_mu_comes_from_the_config_into_the_task():
    fedprox = strategy_from_config(CoordinatorConfig(strategy="fedprox", prox_mu=0.3))
    plan = fedprox.configure(fedprox.init({"w": np.zeros(3)}))
    assert plan.hyper.mu == 0.3 and plan.correction is None
    fedavg = strategy_from_config(CoordinatorConfig(hyper=TaskHyper(mu=0.05)))
    plain = fedavg.configure(fedavg.init({"w": np.zeros(3)}))
    assert plain.hyper.mu == 0.05  # fedavg sends hyper.mu as configured
