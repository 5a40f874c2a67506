"""Which optimizer state a task starts from, and which part of its end state the device keeps.

Shared params start every task with a fresh state, as in FedAvg (unless
TaskHyper.keep_optimizer_state): their momentum was built on an older global model, which the
task's new one replaces. A personal param is not replaced: it continues from the device's own
value, so its SGD momentum buffer continues too. Restarting it each task cut the personal
head's steps short: SGD's buffer (no bias correction) ramps up over ~1 / (1 - momentum) steps,
and a task on a small device is a few steps (digits, 20 devices on Dirichlet 0.1: about 70
examples, batch 20, 2 epochs = 8 steps, where a constant gradient moves momentum 0.9 about 29
lr-steps against 80 carried). The head then ended 1-3 points under the same head trained as one
run (local-only), with the body frozen and every device in every round (0.951 against 0.976).
AdamW's moments are bias-corrected, so its first steps are full-size already; a carried
moment with a restarted step counter would be scaled up instead. It keeps nothing here.
"""

from __future__ import annotations

import numpy as np

from .kernel.manifest import Manifest
from .kernel.protocol import TaskHyper
from .trainer.base import Params

MOMENTUM = ".momentum_buffer"  # fresh_optimizer_state's SGD names: <param>.momentum_buffer


def _personal_names(manifest: Manifest) -> set[str]:
    return {p.name + MOMENTUM for p in manifest.by_role("personal")}


def carries_personal(hyper: TaskHyper) -> bool:
    """Whether a task keeps only the personal params' state (SGD with momentum, keep_optimizer_state off)."""
    return not hyper.keep_optimizer_state and hyper.optimizer == "sgd" and hyper.momentum > 0


def start_state(stored: Params | None, fresh: Params, manifest: Manifest, hyper: TaskHyper) -> Params | None:
    """The state a task starts from: with keep_optimizer_state, `stored` whole when it has
    `fresh`'s names and shapes; else `fresh` with the personal params' momentum from `stored`
    where it has them (same shape). None: start afresh."""
    if hyper.keep_optimizer_state:
        fits = stored is not None and set(stored) == set(fresh)
        return stored if fits and all(np.shape(stored[k]) == np.shape(v) for k, v in fresh.items()) else None
    if not carries_personal(hyper) or not stored:
        return None
    kept = {k: stored[k] for k in _personal_names(manifest)
            if k in stored and k in fresh and np.shape(stored[k]) == np.shape(fresh[k])}
    return {**fresh, **kept} if kept else None


def state_to_keep(state: Params, manifest: Manifest, hyper: TaskHyper) -> Params | None:
    """What the device stores of a task's end state: all of it with keep_optimizer_state, the
    personal params' momentum when carries_personal, else nothing (None: no stale file lingers)."""
    if hyper.keep_optimizer_state:
        return state
    if not carries_personal(hyper):
        return None
    kept = {k: v for k, v in state.items() if k in _personal_names(manifest)}
    return kept or None
