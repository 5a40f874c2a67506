"""A small LoRA MLP with two heads, its batches, and a plain float64 loop of torch's SGD on the
numpy reference model's gradients: the oracle of test_portable_backend_edges.py and
test_ort_training_edges.py (mutation9-backends)."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.kernel.manifest import load_manifest
from fedge.edge_runtime.trainer.base import StepHyper
from fedge.edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec


def tiny_setup(outdir, ort_training: bool, steps: int, seed: int):
    """(artifact dir, manifest, trainable params off their init, `steps` batches of 4)."""
    build_artifacts(mlp_spec(6, 3, hidden=(5,), modes=("lora",), lora_rank=2), outdir, ort_training=ort_training)
    manifest = load_manifest(outdir)
    rng = np.random.default_rng(seed)
    with np.load(outdir / "params_init.npz") as data:
        init = {p.name: data[p.name] + 0.1 * rng.normal(size=p.shape).astype(np.float32) for p in manifest.trainable}
    batches = [(rng.normal(size=(4, 6)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(steps)]
    return outdir, manifest, init, batches


def plain_sgd_loop(outdir, manifest, init, batches, hypers: list[StepHyper]) -> dict:
    """torch.optim.SGD written out in float64: g += wd * p; buf = momentum * buf + g; p -= lr * buf."""
    model = NumpyModel(manifest.spec, load_frozen(outdir, manifest), dtype=np.float64)
    params = {k: v.astype(np.float64) for k, v in init.items()}
    buf = {k: np.zeros_like(v) for k, v in params.items()}
    for (z, y), h in zip(batches, hypers):
        _, grads = model.loss_and_grads(params, z.astype(np.float64), y)
        for k in params:
            buf[k] = h.momentum * buf[k] + grads[k] + h.weight_decay * params[k]
            params[k] = params[k] - h.lr * buf[k]
    return params


def run(backend, manifest, init, batches, hypers: list[StepHyper]) -> dict:
    """start (anchor = the params, no correction), one step per batch, the params read back."""
    backend.start(init, None, {p.name: init[p.name] for p in manifest.by_role("shared")}, None)
    for (z, y), h in zip(batches, hypers):
        backend.step(z, y, h)
    return backend.current()[0]


def strided(a: np.ndarray) -> np.ndarray:
    """The same values, every other element of a twice-as-wide array (not C-contiguous)."""
    return np.repeat(a[..., None], 2, axis=-1)[..., 0]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def check_wide_inputs_train_as_float32(make_backend, setup, hypers: list[StepHyper]) -> None:
    """float64 params that are strided views and strided float32 batches train exactly as the
    float32 originals (start and step cast and copy); the caller's arrays stay as they were."""
    _, manifest, init, batches = setup
    want = run(make_backend(), manifest, init, batches, hypers)
    wide = {k: strided(v.astype(np.float64)) for k, v in init.items()}
    assert all(w.dtype == np.float64 and not w.flags.c_contiguous for w in wide.values())
    wide_batches = [(strided(z), y) for z, y in batches]
    assert all(z.dtype == np.float32 and not z.flags.c_contiguous for z, _ in wide_batches)
    kept = {k: v.copy() for k, v in wide.items()}
    got = run(make_backend(), manifest, wide, wide_batches, hypers)
    assert max_diff(got, want) == 0.0
    assert all(got[k].dtype == np.float32 for k in got)
    assert all(np.array_equal(wide[k], kept[k]) for k in wide)
