"""One task's local training: epochs of minibatch steps on a backend, as a pure-ish function
(no clock, no I/O; the abort check is injected), and SCAFFOLD's client control-variate update.

FedProx and SCAFFOLD need nothing else here: the backend's step adds mu * (P - P.global) and
the correction c - c_i to every shared param's gradient (models/graphs.py), on every backend
(portable graph, numpy reference, and ort-training, whose loss graph carries the same terms).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .kernel.errors import ConfigError, Diverged, TaskAborted, TrainingError
from .kernel.manifest import Manifest
from .kernel.protocol import TaskHyper
from .trainer.base import Params, StepHyper, TrainerBackend


@dataclass(frozen=True)
class LocalResult:
    shared_delta: Params  # new shared params - global shared params
    personal: Params
    opt_state: Params
    num_examples: int
    steps: int
    mean_loss: float
    epoch_losses: tuple[float, ...] = ()  # each epoch's mean batch loss, in order


def step_hyper(hyper: TaskHyper) -> StepHyper:
    return StepHyper(
        lr=hyper.lr,
        weight_decay=hyper.weight_decay,
        mu=hyper.mu,
        momentum=hyper.momentum,
        beta1=hyper.beta1,
        beta2=hyper.beta2,
        eps=hyper.eps,
        max_grad_norm=hyper.max_grad_norm,
    )


LOSS_FLOOR = 1.0  # nats: a near-zero first loss must not make ordinary batch noise look like divergence


def check_guard_hyper(hyper: TaskHyper) -> None:
    """ConfigError unless the training guards are usable numbers (a task is network input)."""
    if not (math.isfinite(hyper.max_grad_norm) and hyper.max_grad_norm >= 0):
        raise ConfigError(f"max_grad_norm must be finite and >= 0 (0 = off), got {hyper.max_grad_norm}")
    if not (math.isfinite(hyper.divergence_factor) and (hyper.divergence_factor == 0 or hyper.divergence_factor > 1)):
        raise ConfigError(f"divergence_factor must be 0 (off) or a finite number > 1, got {hyper.divergence_factor}")


def check_loss(loss: float, first: float | None, steps: int, hyper: TaskHyper, z: np.ndarray | None = None) -> None:
    """Diverged if the batch loss is non-finite, or past divergence_factor times the first
    loss (or LOSS_FLOOR, whichever is larger). z, the features, only sharpens the message."""
    hint = lambda: _scale_hint(z) if z is not None else ""  # noqa: E731  (only on the failure path)
    if not math.isfinite(loss):
        raise Diverged(f"loss became {loss} at step {steps}; lower the learning rate (lr={hyper.lr})" + hint())
    if first is not None and hyper.divergence_factor and loss > hyper.divergence_factor * max(first, LOSS_FLOOR):
        raise Diverged(f"loss {loss:.4g} at step {steps} is over {hyper.divergence_factor:g}x the first "
                       f"{first:.4g}; lower the learning rate (lr={hyper.lr})" + hint())


def train_locally(
    backend: TrainerBackend,
    manifest: Manifest,
    shared: Params,
    personal: Params,
    opt_state: Params | None,
    z: np.ndarray,
    y: np.ndarray,
    hyper: TaskHyper,
    rng: np.random.Generator,
    correction: Params | None = None,
    should_abort: Callable[[], str | None] = lambda: None,
) -> LocalResult:
    """Run hyper.epochs over (z, y) in shuffled minibatches; checks `should_abort` before
    every step and raises TaskAborted with its reason.

    Guards: the backend clips each step's gradient to hyper.max_grad_norm, and a batch loss
    that is non-finite or blows up (check_loss) raises Diverged, so a task never sends the
    delta of a run that went off. A step's loss is measured before the step, so the last
    step itself is bounded by the clipping, not by the loss check."""
    n = len(y)
    if n == 0:
        raise TrainingError("no local training examples")
    check_guard_hyper(hyper)
    backend.start({**shared, **personal}, opt_state, anchor=shared, correction=correction)
    sh = step_hyper(hyper)
    # Sums, not a list of every batch loss: a task of a million epochs of batch size 1 (each in
    # range) trains until the device's time cap, and the list grew by 32 bytes a step, hundreds
    # of MB in an hour of a small head's steps.
    steps, first, total, epoch_means = 0, None, 0.0, []
    batches_per_epoch = math.ceil(n / hyper.batch_size)
    for _ in range(hyper.epochs):
        epoch_total, epoch_steps = 0.0, 0
        order = rng.permutation(n)
        for b in range(batches_per_epoch):
            cause = should_abort()
            if cause:
                raise TaskAborted(cause, f"after {steps} steps")
            idx = order[b * hyper.batch_size : (b + 1) * hyper.batch_size]
            loss = backend.step(z[idx], y[idx], sh)
            check_loss(loss, first, steps, hyper, z)
            first = loss if first is None else first
            total, epoch_total, epoch_steps = total + loss, epoch_total + loss, epoch_steps + 1
            steps += 1
            if hyper.max_steps and steps >= hyper.max_steps:
                break
        _keep_mean(epoch_means, epoch_total, epoch_steps)
        if hyper.max_steps and steps >= hyper.max_steps:
            break
    params, state = backend.current()
    for name, value in params.items():
        if not np.all(np.isfinite(value)):
            raise Diverged(f"param {name} became non-finite; lower the learning rate (lr={hyper.lr})"
                           + _scale_hint(z))
    shared_names = [p.name for p in manifest.by_role("shared")]
    delta = {k: params[k] - shared[k] for k in shared_names}
    new_personal = {k: params[k] for k in personal}
    return LocalResult(delta, new_personal, state, n, steps, float(total / steps), tuple(epoch_means))


def _keep_mean(means: list[float], total: float, count: int) -> None:
    if count:
        means.append(total / count)


SCAFFOLD_OPTIMIZERS = ("sgd",)


def check_scaffold_hyper(hyper: TaskHyper) -> None:
    """ConfigError unless option II's estimate below is a gradient for this optimizer."""
    if hyper.optimizer not in SCAFFOLD_OPTIMIZERS:
        raise ConfigError(f"SCAFFOLD needs optimizer 'sgd', not {hyper.optimizer!r}: with AdamW, (x - y_i) / (K lr) "
                          "is a mean preconditioned step, not a gradient, so it cannot estimate c_i")
    if not 0 <= hyper.momentum < 1:
        raise ConfigError(f"SCAFFOLD needs momentum in [0, 1), got {hyper.momentum}")


def _scale_hint(z: np.ndarray) -> str:
    """Divergence on features far from unit scale is the data's fault more often than the rate's.
    z is what the trainable layers see (the frozen backbone's output), not the features: on
    features of 0..255 it reached 770, and "largest |value| 770" read as the features' own."""
    top = float(np.max(np.abs(z))) if z.size else 0.0
    return f" or standardize the features (the trainable layers' inputs reach |value| {top:.3g})" if top > 10 else ""


def momentum_steps(steps: int, momentum: float) -> float:
    """How many plain-SGD steps K momentum-SGD steps from an empty buffer move a constant gradient."""
    if momentum == 0:
        return float(steps)
    return (steps - momentum * (1 - momentum ** steps) / (1 - momentum)) / (1 - momentum)


def scaffold_control_delta(server_control: Params, shared_delta: Params, steps: int, hyper: TaskHyper) -> Params:
    """Δc_i = c_i+ - c_i by SCAFFOLD's option II (Karimireddy et al. 2020, eq. 4):

        c_i+ = c_i - c + (x - y_i) / (K lr)   =>   Δc_i = -c - (y_i - x) / (K lr)

    with y_i - x = `shared_delta` (uncompressed) and K = `steps`. For plain SGD,
    x - y_i = lr * sum_k (g_k + c - c_i), so c_i+ is exactly the mean of the K local gradients
    g_k (data loss, weight decay and the prox term; not the correction): the estimate of
    client i's gradient that c_i stands for.

    SGD with momentum β (torch semantics, dampening 0) moves by lr * buf_k at step k. SCAFFOLD
    tasks start from an empty buffer (DeviceRuntime drops the optimizer state), so for a
    constant gradient g, buf_k = g (1 - β^k) / (1 - β), and K steps move by lr * g * S with

        S = sum_{k=1..K} (1 - β^k) / (1 - β) = (K - β (1 - β^K) / (1 - β)) / (1 - β),

    which replaces K (S = K for β = 0). An earlier version divided by K / (1 - β), the warmed-up
    limit, with the buffer kept across rounds: devices with one or two steps per round then got
    c_i from a stale buffer, a tenth of the right size, and SCAFFOLD diverged on quantity skew.
    AdamW is refused (check_scaffold_hyper): its step lr * m / sqrt(v) is no gradient, and
    c - c_i built from it would be added to raw gradients in other units.
    """
    check_scaffold_hyper(hyper)
    if steps < 1:
        raise TrainingError("SCAFFOLD's control update needs at least one local step")
    # The task's lr is the coordinator's word: a subnormal one (5e-324 is in range) made the scale
    # inf, and inf * 0 a NaN that the encoder refused with a ValueError out of the device's poll,
    # the task left unanswered. A Δc_i that fp32 cannot hold is declined as diverged instead.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        scale = np.divide(1.0, np.float64(hyper.lr) * momentum_steps(steps, hyper.momentum))
        out = {k: (-np.asarray(c, np.float64) - scale * np.asarray(shared_delta[k], np.float64)).astype(np.float32)
               for k, c in server_control.items()}
    for name, value in out.items():
        if not np.all(np.isfinite(value)):
            raise Diverged(f"SCAFFOLD's control update for {name} is not finite in fp32: (x - y_i) / (K lr) with "
                           f"K = {steps} steps and lr = {hyper.lr:g}; raise the learning rate")
    return out
