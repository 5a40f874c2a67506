"""Edges of the portable backend's session code (trainer/portable.py) that the mutation9-backends
audit found no test reaching: a learning rate (or momentum, or weight decay) that changes
between the steps of one run, params handed over as float64 strided views, an unknown
optimizer, and the thread count of both sessions. Oracle: a plain float64 loop of torch's SGD
on the numpy reference model's gradients, on the same weights and batches (backend_cases.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")  # the build

from fedge.edge_runtime.kernel.errors import UnsupportedByBackend  # noqa: E402
from fedge.edge_runtime.trainer.base import StepHyper  # noqa: E402
from fedge.edge_runtime.trainer.numpy_ref import NumpyBackend  # noqa: E402
from fedge.edge_runtime.trainer.portable import PortableBackend  # noqa: E402
from tests.edge_runtime.backend_cases import (  # noqa: E402
    check_wide_inputs_train_as_float32,
    max_diff,
    plain_sgd_loop,
    run,
    tiny_setup,
)

# lr, momentum and weight decay change from step to step (a schedule, a new epoch's rate); lr 0 once.
SCHEDULE = [StepHyper(lr=0.2, momentum=0.9, weight_decay=0.01), StepHyper(lr=0.05, momentum=0.9, weight_decay=0.01),
            StepHyper(lr=0.0, momentum=0.9, weight_decay=0.01), StepHyper(lr=0.5, momentum=0.5, weight_decay=0.1),
            StepHyper(lr=0.5, momentum=0.5, weight_decay=0.1)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("portable-edges"), ort_training=False, steps=len(SCHEDULE), seed=11)


def test_a_rate_that_changes_between_steps_is_the_rate_each_step_uses(tiny):
    """The backend caches the hyperparameter feeds and refeeds them only when they change; each
    step must run at its own lr, momentum and weight decay, not the first step's."""
    outdir, manifest, init, batches = tiny
    got = run(PortableBackend(outdir, manifest, "sgd"), manifest, init, batches, SCHEDULE)
    want = plain_sgd_loop(outdir, manifest, init, batches, SCHEDULE)
    first_only = plain_sgd_loop(outdir, manifest, init, batches, [SCHEDULE[0]] * len(SCHEDULE))
    assert max_diff(want, first_only) > 1e-2  # the schedule matters at this size
    assert max_diff(got, want) < 1e-5


def test_float64_and_strided_params_and_batches_train_as_their_float32_values(tiny):
    check_wide_inputs_train_as_float32(lambda: PortableBackend(*tiny[:2], "sgd"), tiny, SCHEDULE)


@pytest.mark.parametrize("backend", [PortableBackend, NumpyBackend])
def test_an_unknown_optimizer_is_refused_by_name_before_any_file_is_opened(tiny, backend):
    """The same named error as the ORT-training backend's; the numpy reference once took any
    name but 'sgd' for AdamW when handed an optimizer state."""
    outdir, manifest = tiny[:2]
    with pytest.raises(UnsupportedByBackend, match="unknown optimizer 'adam'; expected 'sgd' or 'adamw'"):
        backend(outdir, manifest, "adam")


def test_both_sessions_run_on_the_threads_asked_for(tiny):
    """fedge bench train-step --threads measures thread scaling through this knob: the train and eval sessions
    must get it (one inter-op thread either way)."""
    outdir, manifest = tiny[:2]
    for threads in (1, 3):
        backend = PortableBackend(outdir, manifest, "sgd", threads=threads)
        for session in (backend.session, backend.eval_session):
            opts = session.get_session_options()
            assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (threads, 1)
