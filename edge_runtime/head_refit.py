"""Refitting a device's private head to the committed body it is scored with, by as many
head-only steps as the body moved without it (FedRep's order: the head fit to the body, then
the next task trains from it). Pure apart from the device's store it reads and writes.

Why: a task trains the private head beside the device's own copy of the body, but the head is
scored (and served) with the body the fleet commits, the mean of every device's, and that body
moves on in every round the device sits out. Why scaled: a whole task's head steps at every
evaluation (branch perso51-refit-attempt) helped where devices train in half the rounds (digits)
and over-trained the heads of a fleet that trains every round (the pretrained demo fell from
98.3% to 97.1%). So the refit follows the rounds committed without the device since its last
task: none when its own task went into the model evaluated, a task's worth once the body has
moved on for REFIT_HORIZON rounds, and no more after that until its next task.

"Its own task went in" is a proxy read off versions: a task from version b is taken to commit
into b+1 (refit_steps). It is wrong when the update was rejected, late, dropped by
over-selection or its secure round aborted (b+1 is then scored unrefit though the body moved
without the device), and in async mode (FedBuff), where a task from b lands in a later version
(the refit then fits the head to a body that holds the device's own update).

The refit is a task's worth of training, so it runs under a task's limits: the caller's
should_abort (the device's abort check; the agent adds a time limit, EVAL_REFIT_S) and the
task's divergence rule. Stopped, diverged or without usable data, the device scores the head it
kept. A refit head is kept (saved, counted in head_fits) only after it was scored (keep_refit).
With keep_optimizer_state, the next task resumes the optimizer state its last task saved, from
before the refit (which starts its own afresh).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import numpy as np

from .kernel.errors import FedgeError, TrainingError
from .kernel.protocol import TaskHyper
from .personalize import tune_head
from .trainer.base import Params, TrainerBackend

log = logging.getLogger("fedge.device")

REFIT_SALT = 11  # the refit's batch order: its own stream of the device's seed, apart from tasks' and tuning's
REFIT_HORIZON = 1  # committed rounds without the device after which a refit owes its last task's steps


@dataclasses.dataclass(frozen=True)
class HeadFit:
    """How the device's last task of a model trained its personal head, and what was refit since."""

    hyper: TaskHyper
    steps: int  # the task's steps
    base_version: int  # the version it trained from: its own update commits into base_version + 1
    refit: int = 0  # head-only steps refit since that task


def refit_steps(fit: HeadFit, version: int, horizon: int = REFIT_HORIZON) -> int:
    """Head-only steps to refit before scoring committed `version`: the share of the task's steps
    that the rounds committed without this device since its task have earned (missed / horizon,
    at most all of them, rounded up), less those already refit since that task."""
    missed = version - fit.base_version - 1
    if missed <= 0 or fit.steps <= 0:
        return 0
    owed = math.ceil(fit.steps * min(missed, horizon) / horizon)
    return max(0, owed - fit.refit)


def refit_personal_head(backend: TrainerBackend, shared: Params, personal: Params, z: np.ndarray, y: np.ndarray,
                        hyper: TaskHyper, steps: int, rng: np.random.Generator,
                        should_abort: Callable[[], str | None] = lambda: None) -> Params:
    """`personal` with head_personal refit to the body in `shared`: `steps` head-only steps
    (tune_head, the body frozen) with the last task's hyperparameters, under a task's limits:
    TaskAborted when should_abort says stop, Diverged by the task's divergence rule
    (divergence_factor, a non-finite loss), TrainingError if the head stops being finite. On
    any of them the device keeps the head it had."""
    tuned = tune_head(backend, {**shared, **personal}, "personal", z, y, hyper, steps, rng,
                      should_abort=should_abort, guard=True)
    for name, value in tuned.items():
        if not np.all(np.isfinite(value)):
            raise TrainingError(f"refitting the personal head made {name} non-finite (lr={hyper.lr})")
    return {**personal, **tuned}


def body_moves(shared: Params) -> bool:
    """Whether a committed model can move the body the private head reads: it shares a param
    outside head_global. A `head`-mode model shares only head_global (its body is frozen), so
    its private head's inputs never change and a refit would only train it further."""
    return any(not name.startswith("head_global.") for name in shared)


def refit_kept_head(device, model, shared: Params, version: int | None, seed: list[int],
                    tuning_backend: Callable[[object, str], TrainerBackend],
                    should_abort: Callable[[], str | None] = lambda: None) -> tuple[Params | None, HeadFit | None]:
    """The device's kept personal params, private head refit in memory to `shared`'s body
    (committed `version`) by refit_steps, and the HeadFit to record once that head is kept
    (keep_refit, after the scoring), or None with the params as kept: the model has no private
    head, its body does not move (body_moves), no task of it ran in this process (how it trained
    is held in memory only), no version is given, no step is owed, or the refit stopped (aborted
    by should_abort, diverged, no usable training data: with a warning). `device` a
    DeviceRuntime, whose store, data and head_fits this reads; `tuning_backend(model,
    optimizer)` its own."""
    store = device.store(model)
    personal, fit = store.load_personal(), device.head_fits.get((model.model_id, model.state_key))
    if (personal is None or fit is None or version is None or "personal" not in model.manifest.heads
            or not body_moves(shared)):
        return personal, None
    steps = refit_steps(fit, version)
    if steps == 0:
        return personal, None
    x, y = device.data.x_train, device.data.y_train
    try:
        if len(y) == 0 or len(x) != len(y):
            raise TrainingError(f"no usable training examples ({len(x)} inputs, {len(y)} labels)")
        model.check_labels(y, "y_train")
        refit = refit_personal_head(tuning_backend(model, fit.hyper.optimizer), shared, personal,
                                    model.embed(x, cache_key=0), y, fit.hyper, steps,
                                    np.random.default_rng(seed + [version, REFIT_SALT]), should_abort)
    except FedgeError as exc:
        log.warning("device %s: personal head not refit to the evaluated model v%d (%s: %s); scoring the kept one",
                    device.device_id, version, getattr(exc, "reason", "") or type(exc).__name__, exc)
        return personal, None
    return refit, dataclasses.replace(fit, refit=fit.refit + steps)


def keep_refit(device, model, personal: Params, fit: HeadFit) -> None:
    """Keep a refit head once it was scored: saved (fsynced, state.npz), then counted in
    head_fits. A save that fails (a full disk) is logged and the head stays unsaved: the
    evaluation still answers with the refit head's score, and as head_fits is not moved on,
    the next evaluation owes the same steps and tries again."""
    try:
        device.store(model).save_personal(personal)
    except (OSError, FedgeError) as exc:
        log.warning("device %s: refit personal head of %s not saved (%s); it is scored, not kept",
                    device.device_id, model.model_id, exc)
        return
    device.head_fits[(model.model_id, model.state_key)] = fit
