"""Edges of the ort-training backend's session code (trainer/ort_training.py) that the
mutation9-backends audit found no test reaching: a learning rate that changes between steps
and between runs of one backend (the centralized baseline decays it epoch by epoch on one
backend), a manifest that lists the training graph but not its checkpoint, an unknown
optimizer, params handed over as float64 strided views, the params read back staying put
while ORT updates its own in place, and the thread count. Oracle: a plain float64 loop of SGD
on the numpy reference model's gradients (backend_cases.py). Skipped without the training build."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import BackendUnavailable
from fedge.edge_runtime.kernel.ort_loader import load_ort_training

pytestmark = pytest.mark.ort_training
pytest.importorskip("onnx")
try:
    load_ort_training("api")
except BackendUnavailable as exc:
    pytest.skip(f"onnxruntime training build not installed: {exc}", allow_module_level=True)

from fedge.edge_runtime.kernel.artifact_layout import ORT_DIR  # noqa: E402
from fedge.edge_runtime.kernel.errors import UnsupportedByBackend  # noqa: E402
from fedge.edge_runtime.trainer.base import StepHyper  # noqa: E402
from fedge.edge_runtime.trainer.ort_training import OrtTrainingBackend  # noqa: E402
from tests.edge_runtime.backend_cases import (  # noqa: E402
    check_wide_inputs_train_as_float32,
    max_diff,
    plain_sgd_loop,
    run,
    tiny_setup,
)

# ORT's SGD has no momentum or weight decay: the rate is all that changes.
SCHEDULE = [StepHyper(lr=lr) for lr in (0.2, 0.05, 0.0, 0.5)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("ort-edges"), ort_training=True, steps=len(SCHEDULE), seed=12)


def test_each_step_and_each_run_uses_its_own_rate(tiny):
    """A schedule within a run, then a second run on the same backend at other rates (as
    baselines.train_decayed does epoch by epoch): both equal the plain loop at their rates."""
    outdir, manifest, init, batches = tiny
    backend = OrtTrainingBackend(outdir, manifest, "sgd")
    first = run(backend, manifest, init, batches, SCHEDULE)
    assert max_diff(first, plain_sgd_loop(outdir, manifest, init, batches, SCHEDULE)) < 1e-5
    assert max_diff(first, plain_sgd_loop(outdir, manifest, init, batches, [SCHEDULE[0]] * len(SCHEDULE))) > 1e-2
    later = [StepHyper(lr=h.lr / 10) for h in SCHEDULE]
    second = run(backend, manifest, init, batches, later)
    assert max_diff(second, plain_sgd_loop(outdir, manifest, init, batches, later)) < 1e-5


def test_params_read_back_stay_put_after_later_steps_and_runs(tiny):
    """current() hands out copies: ORT's optimizer updates the parameters in place, and a caller
    keeps what it read (a device the personal params for its next task) while the backend goes
    on training, in this run and after a new start."""
    outdir, manifest, init, batches = tiny
    backend = OrtTrainingBackend(outdir, manifest, "sgd")
    read = run(backend, manifest, init, batches[:1], SCHEDULE[:1])
    kept = {k: v.copy() for k, v in read.items()}
    for z, y in batches[1:]:
        backend.step(z, y, StepHyper(lr=0.5))
    assert max_diff(backend.current()[0], kept) > 1e-2  # it went on training
    run(backend, manifest, init, batches[1:], [StepHyper(lr=0.5)] * 3)
    assert all(np.array_equal(read[k], kept[k]) for k in read)


def test_float64_and_strided_params_and_batches_train_as_their_float32_values(tiny):
    check_wide_inputs_train_as_float32(lambda: OrtTrainingBackend(*tiny[:2], "sgd"), tiny, SCHEDULE)


def test_a_manifest_without_the_checkpoint_is_refused_by_name(tiny):
    """Either ORT file missing from the manifest means the build had no training artifacts:
    the folder's ort/checkpoint (there, from this build) is not read."""
    outdir, manifest = tiny[:2]
    assert (outdir / ORT_DIR / "checkpoint").is_file()
    for gone in (f"{ORT_DIR}/checkpoint", f"{ORT_DIR}/training_model.onnx"):
        files = {k: v for k, v in manifest.files.items() if k != gone}
        with pytest.raises(BackendUnavailable, match=f"lists no {gone}"):
            OrtTrainingBackend(outdir, dataclasses.replace(manifest, files=files), "sgd")


def test_an_unknown_optimizer_is_refused_by_name(tiny):
    outdir, manifest = tiny[:2]
    with pytest.raises(UnsupportedByBackend, match="unknown optimizer 'adam'"):
        OrtTrainingBackend(outdir, manifest, "adam")


def test_the_training_session_runs_on_the_threads_asked_for(tiny, monkeypatch):
    outdir, manifest, init = tiny[:3]
    backend = OrtTrainingBackend(outdir, manifest, "sgd", threads=3)
    seen = []
    module = backend.api.Module
    monkeypatch.setattr(backend.api, "Module", lambda *a, session_options, **kw: seen.append(session_options)
                        or module(*a, session_options=session_options, **kw))
    backend.start(init, None, {p.name: init[p.name] for p in manifest.by_role("shared")}, None)
    assert [(o.intra_op_num_threads, o.inter_op_num_threads) for o in seen] == [(3, 1)]
    eval_opts = backend.eval_session.get_session_options()
    assert (eval_opts.intra_op_num_threads, eval_opts.inter_op_num_threads) == (3, 1)
