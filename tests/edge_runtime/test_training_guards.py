"""Local-training guards: gradient-norm clipping and the divergence check (issue 9)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.errors import ConfigError, Diverged
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, Update
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense
from fedge.edge_runtime.local_training import check_guard_hyper, check_loss
from fedge.edge_runtime.trainer.base import StepHyper, clip_step, step_bound
from fedge.edge_runtime.trainer.numpy_ref import NumpyBackend, NumpyModel, load_frozen
from fedge.edge_runtime.trainer.portable import PortableBackend
from tests.edge_runtime.one_device import one_device, reply_to
from tests.tiny_model import CLASSES, build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _naive_norm(arrays) -> float:
    return math.sqrt(sum(float(v) ** 2 for a in arrays.values() for v in np.ravel(a)))


# ---------------------------------------------------------------- pure pieces

def test_the_step_bound_per_optimizer():
    assert step_bound("sgd", StepHyper(lr=0.1, max_grad_norm=2.0)) == pytest.approx(0.2)
    assert step_bound("sgd", StepHyper(lr=0.1, max_grad_norm=2.0, momentum=0.9)) == pytest.approx(2.0)
    assert step_bound("sgd", StepHyper(lr=0.1, max_grad_norm=0.0)) == 0.0
    assert step_bound("adamw", StepHyper(lr=0.1, max_grad_norm=2.0)) == 0.0  # normalized steps: unbounded


def test_clip_step_bounds_the_move_and_keeps_its_direction():
    before = {"w": np.zeros(4, np.float32)}
    after = {"w": np.array([3.0, 4.0, 0.0, 0.0], np.float32)}  # a step of norm 5
    clipped = clip_step(before, after, 1.0)
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8, 0.0, 0.0], rtol=1e-6)
    assert clip_step(before, after, 5.0) is None and clip_step(before, after, 0.0) is None


def test_the_loss_check_names_divergence_and_tolerates_noise():
    hyper = TaskHyper(divergence_factor=10.0)
    check_loss(1.2, None, 0, hyper)
    check_loss(9.9, 0.9, 3, hyper)  # under 10 x max(first, 1 nat)
    check_loss(5.0, 0.01, 3, hyper)  # a near-zero first loss: the 1-nat floor applies
    for loss, first in ((float("nan"), None), (float("inf"), 1.0), (25.0, 2.0)):
        with pytest.raises(Diverged) as info:
            check_loss(loss, first, 4, hyper)
        assert info.value.reason == "diverged" and "step 4" in str(info.value)
    check_loss(1e9, 1.0, 3, TaskHyper(divergence_factor=0.0))  # off: only non-finite is refused


@pytest.mark.parametrize("bad", [dict(max_grad_norm=-1.0), dict(max_grad_norm=float("nan")),
                                 dict(divergence_factor=0.5), dict(divergence_factor=float("inf"))])
def test_guard_settings_from_the_wire_are_checked(bad):
    with pytest.raises(ConfigError):
        check_guard_hyper(dataclasses.replace(TaskHyper(), **bad))


def test_defaults_turn_both_guards_on():
    assert TaskHyper().max_grad_norm > 0 and TaskHyper().divergence_factor > 1
    assert StepHyper().max_grad_norm == 0  # a bare step (backend oracles) is unclipped


# ---------------------------------------------------------------- backends

def _clipped_sgd_oracle(art, manifest, init, batches, lr, max_norm, mu, anchor):
    """Plain SGD with torch's clip_grad_norm_ on the whole gradient, written out in float64."""
    net = NumpyModel(manifest.spec, load_frozen(art, manifest), np.float64)
    p = {k: v.astype(np.float64) for k, v in init.items()}
    for z, y in batches:
        _, grads = net.loss_and_grads(p, z, y)
        for k in anchor:
            grads[k] = grads[k] + mu * (p[k] - anchor[k])
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
        factor = max_norm / norm if norm > max_norm else 1.0
        p = {k: p[k] - lr * factor * grads[k] if k in grads else p[k] for k in p}
    return p


@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_every_backend_clips_plain_sgd_like_torch(model, mu):
    """Momentum 0: bounding each step to lr * max_grad_norm is clipping the gradient, on the
    portable graph and the numpy backend alike (ort-training: test_ort_training_backend.py)."""
    art, manifest, runtime = model
    rng = np.random.default_rng(0)
    z = rng.normal(size=(24, *manifest.embedding_shape)).astype(np.float32)
    y = rng.integers(0, CLASSES, 24)
    batches = [(z[4 * i:4 * i + 4], y[4 * i:4 * i + 4]) for i in range(6)]
    init = {**runtime.initial("shared"), **runtime.initial("personal")}
    anchor = {k: v + 0.1 for k, v in runtime.initial("shared").items()}
    hyper = StepHyper(lr=0.5, max_grad_norm=0.1, mu=mu)
    oracle = _clipped_sgd_oracle(art, manifest, init, batches, 0.5, 0.1, mu, anchor)
    unclipped = _clipped_sgd_oracle(art, manifest, init, batches, 0.5, float("inf"), mu, anchor)
    diff = lambda a, b: max(float(np.abs(a[k] - b[k]).max()) for k in a)  # noqa: E731
    assert diff(oracle, unclipped) > 1e-3  # the clip bound
    for backend in (PortableBackend(art, manifest, "sgd"), NumpyBackend(art, manifest, "sgd", dtype=np.float64)):
        backend.start(init, None, anchor=anchor, correction=None)
        for zb, yb in batches:
            backend.step(zb, yb, hyper)
        assert diff(backend.current()[0], oracle) < 1e-5, backend.name


def test_with_momentum_no_step_moves_further_than_the_bound(model):
    art, manifest, runtime = model
    rng = np.random.default_rng(1)
    z = rng.normal(size=(8, *manifest.embedding_shape)).astype(np.float32)
    y = rng.integers(0, CLASSES, 8)
    init = {**runtime.initial("shared"), **runtime.initial("personal")}
    hyper = StepHyper(lr=5.0, momentum=0.9, max_grad_norm=0.01)  # bound: 5 * 0.01 / 0.1 = 0.5
    for backend in (PortableBackend(art, manifest, "sgd"), NumpyBackend(art, manifest, "sgd")):
        backend.start(init, None, anchor=runtime.initial("shared"), correction=None)
        before, moves = init, []
        for _ in range(5):
            backend.step(z, y, hyper)
            after = backend.current()[0]
            moves.append(_naive_norm({k: after[k].astype(np.float64) - before[k] for k in after}))
            before = after
        assert max(moves) <= 0.5 * (1 + 1e-5) and max(moves) > 0.49, (backend.name, moves)


# ---------------------------------------------------------------- the device

def _task(model, **hyper) -> TrainTask:
    _, manifest, runtime = model
    return TrainTask(round_id=1, task_id="task-1", device_id="devA", model_id=manifest.model_id, model_version=0,
                     params=encode_dense(runtime.initial("shared")),
                     hyper=TaskHyper(epochs=3, batch_size=8, lr=1e4, optimizer="sgd", momentum=0.9, **hyper),
                     compression=CompressionSpec(quant_bits=32), seed=5)


def test_a_device_whose_training_blows_up_sends_diverged_not_an_update(model, tmp_path):
    agent, coord = one_device(model, tmp_path / "guarded")
    reply = reply_to(agent, coord, _task(model))
    assert isinstance(reply, Decline), reply
    assert (reply.reason, reply.stage) == ("diverged", "during")
    assert len(agent.pending) == 0  # nothing kept to resend


def test_without_the_divergence_check_the_same_task_sends_a_huge_delta(model, tmp_path):
    """The oracle for the test above: gradient clipping alone keeps this run finite, but at
    lr 1e4 each step may still move lr * max_grad_norm / (1 - momentum) = 1e6, and the device
    sends that delta. The divergence check is what turns it into a Decline."""
    agent, coord = one_device(model, tmp_path / "unguarded")
    reply = reply_to(agent, coord, _task(model, divergence_factor=0.0))
    assert isinstance(reply, Update)
    assert _naive_norm(decompress_update(decode_tensors(reply.payload))) > 1e5


def test_the_scale_hint_names_what_it_measured():
    """A Diverged message's scale hint is measured on the trainable layers' inputs (a frozen
    backbone's output: 770 on features of 0..255) and said "largest |value| 770", which read
    as the features' own largest value."""
    z = np.array([[770.0, -3.0]], np.float32)
    hint = r"standardize the features \(the trainable layers' inputs reach \|value\| 770\)"
    with pytest.raises(Diverged, match=hint):
        check_loss(float("nan"), None, 3, TaskHyper(lr=0.02), z)
