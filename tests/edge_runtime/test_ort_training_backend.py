"""Oracle tests: the ort-training backend against the portable train-step graph.

Both run the same spec on the same batches; the portable graph (torch semantics, hand-written
backward) is the reference. Skipped where onnxruntime's training build is not installed.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import ArtifactIntegrityError, BackendUnavailable
from fedge.edge_runtime.kernel.ort_loader import load_ort_training

pytestmark = pytest.mark.ort_training
pytest.importorskip("onnx")
try:
    load_ort_training("api")
except BackendUnavailable as exc:
    pytest.skip(f"onnxruntime training build not installed: {exc}", allow_module_level=True)

from fedge.edge_runtime.kernel.artifact_layout import OPTIMIZER_FILES, ORT_DIR, set_adamw_attributes
from fedge.edge_runtime.kernel.manifest import load_manifest
from fedge.edge_runtime.trainer import make_backend
from fedge.edge_runtime.trainer.base import StepHyper
from fedge.edge_runtime.trainer.numpy_ref import NumpyBackend
from fedge.edge_runtime.trainer.ort_training import OrtTrainingBackend
from fedge.edge_runtime.trainer.portable import PortableBackend, make_session
from fedge.models.build import build_artifacts
from fedge.models.spec import load_spec

REPO = Path(__file__).resolve().parents[2]
STEPS, BATCH = 20, 8
# Measured on x86_64, onnxruntime-training-cpu 1.19.2, 20 steps, max |param diff| vs portable:
#   sgd    8e-8 (with FedProx + correction too); losses within 5e-7
#   adamw  7e-7 with prox or weight decay; up to 3.6e-5 (mlp, plain): Adam's m / sqrt(v) is
#          scale-free, so gradients that nearly cancel (noise-level entries) turn float32 rounding
#          into O(lr * 1e-2) steps. Portable, numpy-float32 and ORT all scatter 1e-5..3e-5 around
#          a float64 reference there, hence the looser AdamW bound, still 10x below the HF-mode gap.
TOL = {"sgd": 1e-5, "adamw": 1e-4}


def _spec(name: str):
    if name == "mlp-784-lora-frozen-a":  # FFA-LoRA: lora_a is a frozen param of the ORT graphs
        return replace(load_spec("mlp-784-lora"), lora_train_a=False, name=name)
    return load_spec(name)


@pytest.fixture(scope="module", params=["mlp-784-lora", "cnn-8-lora", "mlp-784-lora-frozen-a"])
def setup(request, tmp_path_factory):
    """(artifact dir, manifest, batches, init params, anchor, correction) for one spec."""
    outdir = tmp_path_factory.mktemp(request.param)
    build_artifacts(_spec(request.param), outdir, ort_training=True)
    manifest = load_manifest(outdir)
    rng = np.random.default_rng(7)
    n = 4 * BATCH
    if "backbone.onnx" in manifest.files:  # embeddings as a device computes them
        x = rng.normal(size=(n, *manifest.input_shape)).astype(np.float32)
        z = make_session(outdir / "backbone.onnx").run(["z"], {"x": x})[0]
    else:
        z = rng.normal(size=(n, *manifest.embedding_shape)).astype(np.float32)
    y = rng.integers(0, manifest.spec["num_classes"], n)
    batches = [(z[i : i + BATCH], y[i : i + BATCH]) for i in range(0, n, BATCH)]
    with np.load(outdir / "params_init.npz") as data:
        init = {p.name: data[p.name] for p in manifest.trainable}
    shared = manifest.by_role("shared")
    anchor = {p.name: init[p.name] + 0.01 * rng.normal(size=p.shape).astype(np.float32) for p in shared}
    correction = {p.name: 0.01 * rng.normal(size=p.shape).astype(np.float32) for p in shared}
    return outdir, manifest, batches, init, anchor, correction


def run(backend, setup, hyper: StepHyper, prox: bool) -> tuple[dict, np.ndarray]:
    _, _, batches, init, anchor, correction = setup
    backend.start(init, None, anchor if prox else init, correction if prox else None)
    losses = [backend.step(*batches[i % len(batches)], hyper) for i in range(STEPS)]
    return backend.current()[0], np.array(losses)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


CASES = [
    ("sgd", StepHyper(lr=0.05), False),
    ("sgd", StepHyper(lr=0.05, mu=0.5), True),  # FedProx + SCAFFOLD correction
    ("adamw", StepHyper(lr=0.005), False),
    ("adamw", StepHyper(lr=0.005, mu=0.5, weight_decay=0.1), True),
]


@pytest.mark.parametrize("optimizer,hyper,prox", CASES, ids=["sgd", "sgd-prox", "adamw", "adamw-wd-prox"])
def test_matches_portable(setup, optimizer, hyper, prox):
    outdir, manifest = setup[:2]
    ref_params, ref_losses = run(PortableBackend(outdir, manifest, optimizer), setup, hyper, prox)
    params, losses = run(OrtTrainingBackend(outdir, manifest, optimizer), setup, hyper, prox)
    assert max_diff(params, ref_params) < TOL[optimizer]
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=TOL[optimizer])
    assert max_diff(params, setup[3]) > 100 * TOL[optimizer]  # it did train
    exact, _ = run(NumpyBackend(outdir, manifest, optimizer, dtype=np.float64), setup, hyper, prox)
    assert max_diff(params, exact) < TOL[optimizer]  # as close to a float64 oracle as portable is


@pytest.mark.parametrize("prox", [False, True], ids=["plain", "prox"])
def test_sgd_gradient_clipping_matches_the_numpy_oracle_on_every_backend(setup, prox):
    """max_grad_norm small enough to bind: ORT's SGD and the portable graph, each step bounded
    in numpy (trainer/base.step_bound), equal the float64 numpy backend; with momentum 0 that is
    clipping the whole gradient (data + prox + correction; test_training_guards.py checks it
    against a plain loop of torch's clip_grad_norm_)."""
    outdir, manifest = setup[:2]
    hyper = StepHyper(lr=0.05, mu=0.5 if prox else 0.0, max_grad_norm=0.05)
    exact, _ = run(NumpyBackend(outdir, manifest, "sgd", dtype=np.float64), setup, hyper, prox)
    unclipped, _ = run(NumpyBackend(outdir, manifest, "sgd", dtype=np.float64), setup,
                       dataclasses.replace(hyper, max_grad_norm=0.0), prox)
    assert max_diff(exact, unclipped) > 100 * TOL["sgd"]  # the clip bound
    for backend in (OrtTrainingBackend(outdir, manifest, "sgd"), PortableBackend(outdir, manifest, "sgd")):
        params, _ = run(backend, setup, hyper, prox)
        assert max_diff(params, exact) < TOL["sgd"], backend.name


def test_huggingface_adamw_mode_differs(setup, tmp_path):
    """Why the artifacts switch ORT's AdamW to adam_mode=0: onnxblock's default HF mode is
    another algorithm (eps placement, decay after the update), far outside float32 noise."""
    outdir, manifest = setup[:2]
    hf_dir = tmp_path / "hf"
    shutil.copytree(outdir, hf_dir)
    import onnx

    model = onnx.load(str(hf_dir / ORT_DIR / OPTIMIZER_FILES["adamw"]))
    set_adamw_attributes(model, 0.9, 0.999, 1e-8, 0.0, adam_mode=1)
    onnx.save(model, str(hf_dir / ORT_DIR / OPTIMIZER_FILES["adamw"]))
    hyper = StepHyper(lr=0.005)  # the baked hyperparameters, so the backend runs the file as is
    ref_params, _ = run(PortableBackend(outdir, manifest, "adamw"), setup, hyper, False)
    hf_params, _ = run(OrtTrainingBackend(hf_dir, manifest, "adamw"), setup, hyper, False)
    assert max_diff(hf_params, ref_params) > 10 * TOL["adamw"]


def test_restart_resets_optimizer_and_predict_matches(setup):
    outdir, manifest, batches = setup[:3]
    backend = make_backend("ort-training", outdir, manifest, "adamw")
    assert isinstance(backend, OrtTrainingBackend)
    hyper = StepHyper(lr=0.005)
    first, _ = run(backend, setup, hyper, True)
    second, _ = run(backend, setup, hyper, True)  # a fresh start: AdamW moments begin at zero again
    assert max_diff(first, second) == 0.0
    assert backend.current()[1] == {}  # ORT's optimizer state cannot be exported
    z = batches[0][0]
    ref = PortableBackend(outdir, manifest, "adamw").predict(first, z)
    got = backend.predict(first, z)
    assert got.keys() == ref.keys() == set(manifest.heads)
    for head in got:
        np.testing.assert_allclose(got[head], ref[head], rtol=0, atol=1e-6)


def test_unsupported_hyperparameters_raise(setup):
    outdir, manifest, batches, init, anchor, _ = setup
    sgd = OrtTrainingBackend(outdir, manifest, "sgd")
    sgd.start(init, None, anchor, None)
    for hyper in (StepHyper(momentum=0.9), StepHyper(weight_decay=1e-4)):
        with pytest.raises(ValueError, match="plain SGD"):
            sgd.step(*batches[0], hyper)
    adamw = OrtTrainingBackend(outdir, manifest, "adamw")
    adamw.start(init, None, anchor, None)
    adamw.step(*batches[0], StepHyper(lr=0.001))
    with pytest.raises(ValueError, match="fixes AdamW"):
        adamw.step(*batches[0], StepHyper(lr=0.001, weight_decay=0.1))


def test_manifest_lists_and_verifies_ort_files(setup):
    outdir, manifest = setup[:2]
    ort_files = sorted(rel for rel in manifest.files if rel.startswith(f"{ORT_DIR}/"))
    assert ort_files == sorted(
        [f"{ORT_DIR}/checkpoint", f"{ORT_DIR}/training_model.onnx"] + [f"{ORT_DIR}/{f}"
                                                                       for f in OPTIMIZER_FILES.values()]
    )
    load_manifest(outdir, verify=True)
    checkpoint = outdir / ORT_DIR / "checkpoint"
    original = checkpoint.read_bytes()
    try:
        checkpoint.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(ArtifactIntegrityError):
            load_manifest(outdir, verify=True)
    finally:
        checkpoint.write_bytes(original)


def test_loader_imports_training_api_without_torch():
    # Every torch import fails, as where torch is not installed: where it is (the import tests
    # use it), the training build's own `import onnxruntime` imports it whatever fedge does.
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"  # import torch raises, find_spec('torch') is None
        "from fedge.edge_runtime.kernel.ort_loader import load_ort_training\n"
        "api = load_ort_training('api'); load_ort_training('artifacts')\n"
        "assert load_ort_training('api') is api\n"  # idempotent
        "import onnxruntime.training.api as direct\n"
        "assert direct is api and hasattr(api, 'Module')\n"
        "assert sys.modules['torch'] is None, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_a_build_without_ort_artifacts_is_refused_by_name_not_run_from_a_stale_folder(tmp_path):
    """A rebuild into an earlier build's folder without the training build (ort_training=False)
    leaves that build's ort/ beside the new graphs; the backend once loaded it and ORT failed
    with 'Parameter data shape mismatch' (or, where shapes matched, trained another model). It
    now goes by the manifest, which lists no ORT files for this build."""
    from fedge.models.spec import mlp_spec

    build_artifacts(mlp_spec(10, 3, hidden=(6,)), tmp_path, ort_training=True)
    assert (tmp_path / ORT_DIR / "checkpoint").is_file()
    manifest = build_artifacts(mlp_spec(12, 3, hidden=(5,)), tmp_path, ort_training=False)
    assert (tmp_path / ORT_DIR / "checkpoint").is_file()  # the earlier build's, still there
    with pytest.raises(BackendUnavailable, match=r"built without ORT training artifacts .*ort/training_model.onnx"):
        make_backend("ort-training", tmp_path, manifest, "sgd")
