"""Head-only fine-tuning on the device: fit one head to the device's data while the rest of
the model stays exactly as received. Pure-ish like local_training (no clock, no I/O).

It runs on the same trainer backend and train-step graph as a task. The graph updates every
trainable param, so the other params are pinned: each step starts from the received values
and only the head's new values and optimizer state are carried to the next step. That costs
a full backward per step, as a task's step does, and needs no second set of artifacts on the
device. personalize() asks for tens of steps; the refit at an evaluation runs up to its last
task's steps, so it takes the task's abort check and divergence rule (should_abort, guard).

Used for:
  * a personalized model from a global one: a copy of head_global tuned on local data
    (full-model FedAvg followed by head fine-tuning, or a device that joined after training);
  * refreshing a private head (head_personal) against the newest shared body (head_refit.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

from .kernel.errors import TaskAborted, TrainingError, UnsupportedByBackend
from .kernel.protocol import TaskHyper
from .local_training import check_guard_hyper, check_loss, step_hyper
from .trainer.base import Params, TrainerBackend, fresh_optimizer_state

HEADS = ("global", "personal")
PINNABLE = ("portable", "numpy")  # backends whose start() takes optimizer state and current() returns it


def head_params(head: str) -> tuple[str, str]:
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    return f"head_{head}.weight", f"head_{head}.bias"


def personal_start(initial: Params, shared: Params) -> Params:
    """A device's personal params before it has trained any, begun from the fleet: the model's
    initial values, with the personal head a copy of the global head in `shared` where the model
    has both with the same shapes (TaskHyper.personal_head_from_global, and
    DeviceRuntime.personalize for a device that never trained or `from_global`). Other personal
    layers keep their values."""
    start = {k: np.array(v, np.float32) for k, v in initial.items()}
    pairs = list(zip(head_params("personal"), head_params("global")))
    # the whole head or none of it: a weight from one head and a bias from the other is no head
    if all(mine in start and fleets in shared and np.shape(shared[fleets]) == start[mine].shape
           for mine, fleets in pairs):
        for mine, fleets in pairs:
            start[mine] = np.array(shared[fleets], np.float32)
    return start


def tune_head(
    backend: TrainerBackend,
    params: Params,
    head: str,
    z: np.ndarray,
    y: np.ndarray,
    hyper: TaskHyper,
    steps: int,
    rng: np.random.Generator,
    should_abort: Callable[[], str | None] = lambda: None,
    guard: bool = False,
) -> Params:
    """`steps` minibatch steps on head `head` only; returns its new params (weight, bias).

    params: every trainable param of the model (shared and personal), the starting point;
    the head's entries are where tuning starts. Batches are drawn epoch by epoch from a
    fresh permutation, as in a task; the optimizer state starts empty. The backend must take
    optimizer state in `start` and give it back from `current` (portable, numpy): pinning
    restarts it every step. ort-training cannot (UnsupportedByBackend); its build runs the
    portable graph too, which is what DeviceRuntime.personalize uses there.

    should_abort is asked before every step, as in a task (TaskAborted with its cause). guard:
    a task's divergence rule (check_loss: Diverged past divergence_factor times the first loss);
    without it only a non-finite loss stops the tuning (TrainingError).
    """
    names = head_params(head)
    missing = [n for n in names if n not in params]
    if missing:
        raise TrainingError(f"the model has no {head} head to tune (missing {missing})")
    if steps <= 0:
        return {n: np.array(params[n], np.float32) for n in names}
    if len(y) == 0:
        raise TrainingError("no local training examples")
    if guard:
        check_guard_hyper(hyper)
    if backend.name not in PINNABLE:
        raise UnsupportedByBackend(f"head tuning restarts the backend every step, keeping its optimizer state; "
                                   f"{backend.name!r} cannot (use one of {PINNABLE})")
    pinned = {k: np.asarray(v, np.float32) for k, v in params.items()}
    current = {n: pinned[n] for n in names}
    fresh = fresh_optimizer_state(backend.manifest, backend.optimizer)
    state = dict(fresh)
    carried = [k for k in fresh if k == "step" or any(k.startswith(f"{n}.") for n in names)]
    # No prox: the head is not pulled back. No step bound: the body is pinned (restarted every
    # step), so a bound on the whole step would be set by moves that are thrown away.
    sh = step_hyper(dataclasses.replace(hyper, mu=0.0, max_grad_norm=0.0))
    shared = {p.name: pinned[p.name] for p in backend.manifest.by_role("shared")}
    batch = max(1, min(hyper.batch_size, len(y)))
    done, first = 0, None
    while done < steps:
        order = rng.permutation(len(y))
        for b in range(math.ceil(len(y) / batch)):
            cause = should_abort()
            if cause:
                raise TaskAborted(cause, f"after {done} head steps")
            idx = order[b * batch : (b + 1) * batch]
            backend.start({**pinned, **current}, state, anchor=shared, correction=None)
            loss = backend.step(z[idx], y[idx], sh)
            if guard:
                check_loss(loss, first, done, hyper)
            elif not math.isfinite(loss):
                raise TrainingError(f"head tuning loss became {loss}; lower the learning rate (lr={hyper.lr})")
            first = loss if first is None else first
            new_params, new_state = backend.current()
            current = {n: new_params[n] for n in names}
            state = {**fresh, **{k: new_state[k] for k in carried}}
            done += 1
            if done >= steps:
                break
    return current
