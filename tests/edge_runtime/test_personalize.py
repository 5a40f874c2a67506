"""Head-only fine-tuning on the device (edge_runtime/personalize.py, DeviceRuntime.personalize).

Oracle: the same steps written out by hand in numpy (softmax regression on the body's
features, torch-semantics SGD with momentum), on the same batches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.errors import TrainingError
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.personalize import tune_head
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.trainer import make_backend
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec

FEATURES, CLASSES = 12, 3
HYPER = TaskHyper(epochs=1, batch_size=8, lr=0.2, optimizer="sgd", momentum=0.9)


def _build(directory, head: str):
    spec = mlp_spec(FEATURES, CLASSES, hidden=(8,), modes=("lora",), lora_rank=2, head=head, name=f"tiny-{head}")
    manifest = build_artifacts(spec, directory, ort_training=False)
    return directory, manifest, ModelRuntime(directory, expected_model_id=manifest.model_id)


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("dual"), "dual")


@pytest.fixture(scope="module")
def global_only(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("global"), "global")


def _separable(n, seed):
    """Three well-separated clusters: a head alone can fit them."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    means = np.eye(CLASSES, FEATURES) * 4.0
    return (means[y] + rng.normal(scale=0.5, size=(n, FEATURES))).astype(np.float32), y


def _perturbed(runtime, rng):
    return {k: (v + rng.normal(scale=0.3, size=v.shape)).astype(np.float32)
            for k, v in {**runtime.initial("shared"), **runtime.initial("personal")}.items()}


def _oracle(feats, y, w, b, steps, batch, lr, momentum, rng):
    """Softmax-regression SGD (torch semantics) on fixed features, float64."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    bw, bb = np.zeros_like(w), np.zeros_like(b)
    done = 0
    while done < steps:
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            logits = feats[idx] @ w + b
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0
            p /= len(idx)
            bw, bb = momentum * bw + feats[idx].T @ p, momentum * bb + p.sum(axis=0)
            w, b = w - lr * bw, b - lr * bb
            done += 1
            if done >= steps:
                break
    return w, b


@pytest.mark.parametrize("head", ["personal", "global"])
def test_tuned_head_matches_a_hand_written_head_only_sgd(dual, head):
    art, manifest, runtime = dual
    params = _perturbed(runtime, np.random.default_rng(0))
    x, y = _separable(29, 1)  # 29: the last batch of each epoch is short
    z = runtime.embed(x)
    backend = make_backend("portable", art, manifest, "sgd")
    steps = 11  # crosses an epoch boundary (4 batches per epoch)
    tuned = tune_head(backend, params, head, z, y, HYPER, steps, np.random.default_rng(5))

    feats = NumpyModel(manifest.spec, load_frozen(art, manifest), np.float64).forward(
        {k: v.astype(np.float64) for k, v in params.items()}, z.astype(np.float64))[0]
    w, b = _oracle(feats, y, params[f"head_{head}.weight"], params[f"head_{head}.bias"], steps, HYPER.batch_size,
                   HYPER.lr, HYPER.momentum, np.random.default_rng(5))
    assert set(tuned) == {f"head_{head}.weight", f"head_{head}.bias"}
    np.testing.assert_allclose(tuned[f"head_{head}.weight"], w, atol=2e-5)
    np.testing.assert_allclose(tuned[f"head_{head}.bias"], b, atol=2e-5)
    assert not np.allclose(tuned[f"head_{head}.weight"], params[f"head_{head}.weight"])


def test_tuning_a_head_the_model_lacks_is_a_training_error(global_only):
    art, manifest, runtime = global_only
    backend = make_backend("portable", art, manifest, "sgd")
    x, y = _separable(8, 0)
    with pytest.raises(TrainingError, match="no personal head"):
        tune_head(backend, runtime.initial("shared"), "personal", runtime.embed(x), y, HYPER, 3,
                  np.random.default_rng(0))


def _device(model, root, seed=0):
    art, manifest, _ = model
    x, y = _separable(60, seed)
    return DeviceRuntime("dev-a", LocalData(x[:45], y[:45], x[45:], y[45:]), {manifest.model_id: art}, root)


def test_a_global_only_model_gets_a_tuned_copy_of_its_head_and_the_shared_params_stay(global_only, tmp_path):
    _, manifest, runtime = global_only
    shared = runtime.initial("shared")
    shared["head_global.weight"][:] = 0.0  # a global head that knows nothing: chance level
    before = {k: v.copy() for k, v in shared.items()}
    device = _device(global_only, tmp_path)
    untuned = device.personalize(manifest.model_id, shared, 0, HYPER)
    tuned = device.personalize(manifest.model_id, shared, 40, HYPER)
    assert untuned.accuracy_personal == untuned.accuracy_global  # 0 steps: the global head as is
    assert tuned.accuracy_personal >= 0.9 > untuned.accuracy_personal
    for name, value in before.items():
        np.testing.assert_array_equal(shared[name], value)
    kept = DeviceStore(tmp_path / "dev-a", manifest.model_id).load_tuned_head()
    assert set(kept) == {"head_global.weight", "head_global.bias"}
    assert not np.array_equal(kept["head_global.weight"], shared["head_global.weight"])


def test_a_private_head_starts_from_the_global_head_when_the_device_never_trained(dual, tmp_path):
    _, manifest, runtime = dual
    shared = runtime.initial("shared")
    shape = shared["head_global.weight"].shape
    shared["head_global.weight"] = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    device = _device(dual, tmp_path)
    result = device.personalize(manifest.model_id, shared, 0, HYPER)
    store = DeviceStore(tmp_path / "dev-a", manifest.model_id)
    np.testing.assert_array_equal(store.load_personal()["head_personal.weight"], shared["head_global.weight"])
    assert result.accuracy_personal == result.accuracy_global

    # With its own head kept, tuning starts from that head; from_global starts over.
    own = store.load_personal()
    own["head_personal.weight"] = np.zeros_like(own["head_personal.weight"])
    store.save_personal(own)
    device.personalize(manifest.model_id, shared, 1, HYPER)
    assert np.abs(store.load_personal()["head_personal.weight"]).max() < 0.5  # one small step from zero
    device.personalize(manifest.model_id, shared, 0, HYPER, from_global=True)
    np.testing.assert_array_equal(store.load_personal()["head_personal.weight"], shared["head_global.weight"])


def _adamw_oracle(feats, y, w, b, steps, batch, h, rng):
    """Softmax regression with torch-semantics AdamW on fixed features, float64."""
    p = [w.astype(np.float64), b.astype(np.float64)]
    m, v = [np.zeros_like(t) for t in p], [np.zeros_like(t) for t in p]
    t = 0
    while t < steps:
        order = rng.permutation(len(y))
        for start in range(0, len(y), batch):
            idx = order[start:start + batch]
            logits = feats[idx] @ p[0] + p[1]
            d = np.exp(logits - logits.max(axis=1, keepdims=True))
            d /= d.sum(axis=1, keepdims=True)
            d[np.arange(len(idx)), y[idx]] -= 1.0
            d /= len(idx)
            t += 1
            for i, g in enumerate((feats[idx].T @ d, d.sum(axis=0))):
                p[i] = p[i] * (1 - h.lr * h.weight_decay)
                m[i] = h.beta1 * m[i] + (1 - h.beta1) * g
                v[i] = h.beta2 * v[i] + (1 - h.beta2) * g * g
                p[i] = p[i] - h.lr / (1 - h.beta1 ** t) * m[i] / (np.sqrt(v[i]) / np.sqrt(1 - h.beta2 ** t) + h.eps)
            if t >= steps:
                break
    return p


@pytest.mark.parametrize("backend", ["portable", "numpy"])
def test_adamw_head_tuning_carries_moments_and_step_count(dual, backend):
    art, manifest, runtime = dual
    params = _perturbed(runtime, np.random.default_rng(2))
    x, y = _separable(29, 4)
    z = runtime.embed(x)
    hyper = TaskHyper(epochs=1, batch_size=8, lr=0.05, optimizer="adamw", weight_decay=0.01)
    tuned = tune_head(make_backend(backend, art, manifest, "adamw"), params, "personal", z, y, hyper, 9,
                      np.random.default_rng(1))
    feats = NumpyModel(manifest.spec, load_frozen(art, manifest), np.float64).forward(
        {k: v.astype(np.float64) for k, v in params.items()}, z.astype(np.float64))[0]
    w, b = _adamw_oracle(feats, y, params["head_personal.weight"], params["head_personal.bias"], 9, 8, hyper,
                         np.random.default_rng(1))
    np.testing.assert_allclose(tuned["head_personal.weight"], w, atol=2e-5)
    np.testing.assert_allclose(tuned["head_personal.bias"], b, atol=2e-5)


def test_from_global_restarts_only_the_head_and_keeps_personal_layers(tmp_path):
    spec = mlp_spec(FEATURES, CLASSES, hidden=(8, 6), modes=("lora", "personal"), lora_rank=2, head="dual",
                    name="tiny-personal-layer")
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    model = (tmp_path / "art", manifest, ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id))
    shared = model[2].initial("shared")
    device = _device(model, tmp_path / "state")
    store = DeviceStore(tmp_path / "state" / "dev-a", manifest.model_id)
    own = {k: np.full_like(v, 0.25) for k, v in model[2].initial("personal").items()}
    store.save_personal(own)
    device.personalize(manifest.model_id, shared, 0, HYPER, from_global=True)
    kept = store.load_personal()
    np.testing.assert_array_equal(kept["fc2.weight"], own["fc2.weight"])  # the device's own layer stays
    np.testing.assert_array_equal(kept["head_personal.weight"], shared["head_global.weight"])


@pytest.mark.ort_training
def test_on_the_training_build_head_tuning_runs_the_portable_graph(tmp_path):
    from fedge.edge_runtime.kernel.errors import UnsupportedByBackend
    from fedge.edge_runtime.trainer import available_backends

    if "ort-training" not in available_backends():
        pytest.skip("needs onnxruntime-training")
    spec = mlp_spec(FEATURES, CLASSES, hidden=(8,), modes=("lora",), lora_rank=2, head="global", name="tiny-ort")
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=True)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    x, y = _separable(60, 0)
    sgd = dataclasses.replace(HYPER, momentum=0.0)  # ORT's SGD has no momentum
    with pytest.raises(UnsupportedByBackend):
        tune_head(make_backend("ort-training", tmp_path / "art", manifest, "sgd"), runtime.initial("shared"), "global",
                  runtime.embed(x), y, sgd, 3, np.random.default_rng(0))
    device = DeviceRuntime("dev-a", LocalData(x[:45], y[:45], x[45:], y[45:]), {manifest.model_id: tmp_path / "art"},
                           tmp_path / "state", backend="ort-training")
    shared = runtime.initial("shared")
    shared["head_global.weight"][:] = 0.0
    assert device.personalize(manifest.model_id, shared, 40, sgd).accuracy_personal >= 0.9


def test_personal_start_copies_only_a_matching_global_head():
    from fedge.edge_runtime.personalize import personal_start

    rng = np.random.default_rng(3)
    initial = {"head_personal.weight": np.zeros((4, 3), np.float32), "head_personal.bias": np.zeros(3, np.float32),
               "fc1.weight": rng.normal(size=(5, 4)).astype(np.float32)}  # a personal layer
    shared = {"head_global.weight": rng.normal(size=(4, 3)).astype(np.float32),
              "head_global.bias": rng.normal(size=3).astype(np.float32)}
    start = personal_start(initial, shared)
    np.testing.assert_array_equal(start["head_personal.weight"], shared["head_global.weight"])
    np.testing.assert_array_equal(start["head_personal.bias"], shared["head_global.bias"])
    np.testing.assert_array_equal(start["fc1.weight"], initial["fc1.weight"])  # other personal layers stay
    start["head_personal.weight"][0, 0] += 1.0  # a copy: training it never writes into the global head
    assert start["head_personal.weight"][0, 0] != shared["head_global.weight"][0, 0]
    # No global head (a personal-only model), or one of another shape, even in part: the initial values
    for other in ({}, {"head_global.weight": np.ones((4, 5), np.float32), "head_global.bias": np.ones(5, np.float32)},
                  {"head_global.weight": np.ones((4, 3), np.float32), "head_global.bias": np.ones(5, np.float32)}):
        kept = personal_start(initial, other)
        assert not kept["head_personal.weight"].any() and not kept["head_personal.bias"].any()
    # No personal head (a global-only model): nothing to start
    assert personal_start({}, shared) == {}
