"""One task's local training: epochs of minibatch steps on a backend, as a pure-ish function
(no clock, no I/O; the abort check is injected)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import TaskAborted, TrainingError
from .manifest import Manifest
from .protocol import TaskHyper
from .trainer.base import Params, StepHyper, TrainerBackend


@dataclass(frozen=True)
class LocalResult:
    shared_delta: Params  # new shared params - global shared params
    personal: Params
    opt_state: Params
    num_examples: int
    steps: int
    mean_loss: float


def step_hyper(hyper: TaskHyper) -> StepHyper:
    return StepHyper(
        lr=hyper.lr,
        weight_decay=hyper.weight_decay,
        mu=hyper.mu,
        momentum=hyper.momentum,
        beta1=hyper.beta1,
        beta2=hyper.beta2,
        eps=hyper.eps,
    )


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
    every step and raises TaskAborted with its reason."""
    n = len(y)
    if n == 0:
        raise TrainingError("no local training examples")
    backend.start({**shared, **personal}, opt_state, anchor=shared, correction=correction)
    sh = step_hyper(hyper)
    steps, losses = 0, []
    batches_per_epoch = math.ceil(n / hyper.batch_size)
    for _ in range(hyper.epochs):
        order = rng.permutation(n)
        for b in range(batches_per_epoch):
            cause = should_abort()
            if cause:
                raise TaskAborted(cause, f"after {steps} steps")
            idx = order[b * hyper.batch_size : (b + 1) * hyper.batch_size]
            loss = backend.step(z[idx], y[idx], sh)
            if not math.isfinite(loss):
                raise TrainingError(f"loss became {loss} at step {steps}; lower the learning rate (lr={hyper.lr})")
            losses.append(loss)
            steps += 1
            if hyper.max_steps and steps >= hyper.max_steps:
                break
        if hyper.max_steps and steps >= hyper.max_steps:
            break
    params, state = backend.current()
    for name, value in params.items():
        if not np.all(np.isfinite(value)):
            raise TrainingError(f"param {name} became non-finite; lower the learning rate (lr={hyper.lr})")
    shared_names = [p.name for p in manifest.by_role("shared")]
    delta = {k: params[k] - shared[k] for k in shared_names}
    new_personal = {k: params[k] for k in personal}
    return LocalResult(delta, new_personal, state, n, steps, float(np.mean(losses)))
