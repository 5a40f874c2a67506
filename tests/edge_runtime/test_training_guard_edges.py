"""Local training's guards at their documented edges (mutation6-training audit): the divergence
rule exactly at divergence_factor x max(first loss, LOSS_FLOOR), measured against the first
loss of the run; the guard settings a task may carry; the step bound at momentum 1; what a run
returns (its steps, epoch means, personal params) and the non-finite param check, on a scripted
backend whose losses and params the test chooses."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.coordinator.config import load_coordinator_config
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.errors import ConfigError, Diverged, MalformedPayload
from fedge.edge_runtime.kernel.protocol import TaskHyper, TrainTask
from fedge.edge_runtime.local_training import check_guard_hyper, check_loss, train_locally
from fedge.edge_runtime.trainer.base import StepHyper, clip_step, fresh_optimizer_state, step_bound
from fedge.edge_runtime.trainer.numpy_ref import apply_optimizer
from tests.coordinator.hostile import as_map, raw_frame


class _Manifest:
    """The one thing train_locally asks a manifest: the shared params (here "w")."""

    def by_role(self, role):
        return [SimpleNamespace(name="w")] if role == "shared" else []


class _Scripted:
    """A backend whose batch losses are `losses` in order; each step adds 1 to every param, or
    sets "w" to NaN at step `nan_at` (the losses stay finite)."""

    name = "scripted"

    def __init__(self, losses, nan_at=None):
        self.losses, self.nan_at, self.steps = list(losses), nan_at, 0

    def start(self, params, opt_state, anchor, correction):
        self.params = {k: np.array(v, np.float32) for k, v in params.items()}

    def step(self, z, y, hyper):
        loss = self.losses[self.steps]
        self.steps += 1
        self.params = {k: v + 1 for k, v in self.params.items()}
        if self.steps == self.nan_at:
            self.params["w"] = np.full_like(self.params["w"], np.nan)
        return loss

    def current(self):
        return dict(self.params), {}


def _run(losses, nan_at=None, **hyper):
    backend = _Scripted(losses, nan_at)
    shared, personal = {"w": np.zeros(2, np.float32)}, {"p": np.zeros(3, np.float32)}
    z, y = np.zeros((4, 2), np.float32), np.zeros(4, np.int64)
    task = TaskHyper(**{"epochs": 1, "batch_size": 1, **hyper})
    return train_locally(backend, _Manifest(), shared, personal, None, z, y, task, np.random.default_rng(0)), backend


def test_exactly_divergence_factor_times_the_first_loss_is_not_divergence():
    hyper = TaskHyper(divergence_factor=10.0)
    check_loss(10.0, 1.0, 1, hyper)  # "exceeds": equal is allowed
    with pytest.raises(Diverged):
        check_loss(np.nextafter(10.0, 11.0), 1.0, 1, hyper)


def test_the_floor_is_one_nat_exactly():
    """A first loss under 1 nat is measured as 1: 10 x 1 is the limit, whatever the first loss."""
    hyper = TaskHyper(divergence_factor=10.0)
    for first in (0.01, 0.5, 0.99):
        check_loss(10.0, first, 2, hyper)
        with pytest.raises(Diverged):
            check_loss(10.01, first, 2, hyper)


def test_the_limit_is_the_runs_first_loss_not_the_last_one():
    """Losses 1, 3, 9, 27: each step is 3x the one before, the fourth 27x the first, over 10x."""
    with pytest.raises(Diverged, match="step 3"):
        _run([1.0, 3.0, 9.0, 27.0], divergence_factor=10.0)
    result, _ = _run([1.0, 3.0, 9.0, 27.0], divergence_factor=0.0)  # the same run unguarded ends
    assert result.steps == 4


def test_a_non_finite_param_after_finite_losses_is_diverged():
    with pytest.raises(Diverged, match="param w became non-finite") as info:
        _run([1.0, 1.0, 1.0, 1.0], nan_at=4)
    assert info.value.reason == "diverged"


def test_what_a_run_returns_against_a_plain_loop():
    """Epoch means, mean loss, steps, the delta and the personal params after the last step."""
    losses = [1.0, 2.0, 4.0, 8.0, 0.5, 0.25, 0.125, 1.0]
    result, backend = _run(losses, epochs=2, divergence_factor=0.0)
    assert result.epoch_losses == (sum(losses[:4]) / 4, sum(losses[4:]) / 4)
    assert result.mean_loss == sum(losses) / 8 and result.steps == backend.steps == 8
    np.testing.assert_array_equal(result.shared_delta["w"], np.full(2, 8.0))
    np.testing.assert_array_equal(result.personal["p"], np.full(3, 8.0))  # trained, not the input


def test_max_steps_stops_inside_an_epoch_at_exactly_that_many():
    result, backend = _run([1.0] * 8, epochs=2, max_steps=3)
    assert result.steps == backend.steps == 3 and result.epoch_losses == (1.0,)


def test_zero_turns_each_guard_off_and_factor_one_is_refused():
    check_guard_hyper(TaskHyper(max_grad_norm=0.0, divergence_factor=0.0))  # both documented as "off"
    check_guard_hyper(TaskHyper(divergence_factor=np.nextafter(1.0, 2.0)))
    with pytest.raises(ConfigError, match="divergence_factor"):
        check_guard_hyper(dataclasses.replace(TaskHyper(), divergence_factor=1.0))  # every run would diverge


def test_momentum_one_has_no_step_bound_and_is_refused_with_betas_of_one(tmp_path):
    """At momentum 1 no step is bounded (lr * g / (1 - 1)) and the SGD buffer never decays; at
    beta1 or beta2 = 1 AdamW's bias correction divides by 0. TaskHyper refuses all three, as the
    coordinator's config refuses its server optimizer's, in code, on the wire and in a config file;
    just under 1 is taken."""
    assert step_bound("sgd", StepHyper(lr=0.1, max_grad_norm=1.0, momentum=1.0)) == 0.0
    assert step_bound("sgd", StepHyper(lr=0.1, max_grad_norm=1.0, momentum=0.99)) == pytest.approx(10.0)
    task = TrainTask(1, "t1", "d1", "m", 1, b"")
    code = encode_message(task)[6]  # the frame's message-type byte (hostile.raw_frame's layout)
    for name in ("momentum", "beta1", "beta2"):
        with pytest.raises(ValueError, match=rf"hyper.{name} must be in \[0, 1\), got 1.0"):
            TaskHyper(**{name: 1.0})
        TaskHyper(**{name: float(np.nextafter(1.0, 0.0))})
        conf = tmp_path / f"{name}.toml"
        conf.write_text(f"[hyper]\n{name} = 1.0\n")
        with pytest.raises(ConfigError, match=name):
            load_coordinator_config(conf)
    body = as_map(task)
    assert decode_message(raw_frame(code, body)) == task
    body["hyper"]["momentum"] = 1.0
    with pytest.raises(MalformedPayload, match="momentum"):
        decode_message(raw_frame(code, body))


def test_a_non_finite_step_is_left_to_the_divergence_check():
    """clip_step returns None for a step whose norm is inf or NaN (its docstring): scaling it by
    max_norm / inf would turn it into 0 x inf = NaN rather than leave it as it came."""
    before = {"w": np.zeros(2, np.float32)}
    for bad in (np.inf, np.nan):
        assert clip_step(before, {"w": np.array([bad, 1.0], np.float32)}, 1.0) is None


def _torch_by_hand(optimizer, p, grads, hyper):
    """torch.optim.SGD (momentum, weight_decay) and AdamW's update rules as a plain loop over
    coordinates, float64, from a fresh state."""
    p, buf, m, v = [float(x) for x in p], [0.0] * len(p), [0.0] * len(p), [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        for i, gi in enumerate(g):
            if optimizer == "sgd":
                gi = gi + hyper.weight_decay * p[i]
                buf[i] = hyper.momentum * buf[i] + gi
                p[i] -= hyper.lr * buf[i]
            else:
                p[i] *= 1 - hyper.lr * hyper.weight_decay
                m[i] = hyper.beta1 * m[i] + (1 - hyper.beta1) * gi
                v[i] = hyper.beta2 * v[i] + (1 - hyper.beta2) * gi * gi
                m_hat, v_hat = m[i] / (1 - hyper.beta1**t), v[i] / (1 - hyper.beta2**t)
                p[i] -= hyper.lr * m_hat / (v_hat**0.5 + hyper.eps)
    return p


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_reference_optimizer_is_torchs_rule_with_weight_decay(optimizer):
    """The numpy backend's apply_optimizer, three steps with weight decay and momentum (beta2
    0.9, so the second moment's bias correction is far from 1), against the rule written out."""
    hyper = StepHyper(lr=0.1, weight_decay=0.5, momentum=0.9, beta1=0.8, beta2=0.9, eps=1e-3)
    grads = [np.array([0.3, -1.0, 2.0]), np.array([0.1, 0.4, -0.5]), np.array([-0.2, 0.0, 1.0])]
    manifest = SimpleNamespace(trainable=[SimpleNamespace(name="w", shape=(3,))])
    params, state = {"w": np.array([1.0, -2.0, 0.5])}, fresh_optimizer_state(manifest, optimizer)
    state = {k: v.astype(np.float64) for k, v in state.items()}
    for g in grads:
        apply_optimizer(optimizer, params, {"w": g}, state, hyper)
    np.testing.assert_allclose(params["w"], _torch_by_hand(optimizer, [1.0, -2.0, 0.5], grads, hyper), rtol=1e-12)
