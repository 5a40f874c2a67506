"""The trainer interface every backend implements.

A backend owns one model's compiled graphs and runs optimizer steps on batches of
embeddings (the output of the frozen backbone). It is stateful for the length of one local
training run: `start` loads params and optimizer state, `step` advances them, `current`
returns them. Params and optimizer state are plain dicts of float32 arrays, so every
backend persists and exchanges them the same way.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..kernel.errors import UnsupportedByBackend
from ..kernel.manifest import Manifest
from ..kernel.task_hyper import OPTIMIZERS

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class StepHyper:
    """Per-step hyperparameters (see models/graphs.py for the exact update rules)."""

    lr: float = 0.05
    weight_decay: float = 0.0
    mu: float = 0.0
    momentum: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float = 0.0  # clip each step to this gradient norm (step_bound); 0 = off


class TrainerBackend(ABC):
    """One model, one optimizer ("sgd" or "adamw"), one backend."""

    name: str = "abstract"

    def __init__(self, artifact_dir, manifest: Manifest, optimizer: str):
        if optimizer not in OPTIMIZERS:  # one named error for every backend, before any file is opened
            raise UnsupportedByBackend(f"unknown optimizer {optimizer!r}; expected 'sgd' or 'adamw'")
        self.artifact_dir = artifact_dir
        self.manifest = manifest
        self.optimizer = optimizer

    @abstractmethod
    def start(self, params: Params, opt_state: Params | None, anchor: Params, correction: Params | None) -> None:
        """Load trainable params (shared + personal) and optimizer state (None = fresh).

        anchor: the round's global shared params (FedProx); correction: SCAFFOLD's c - c_i
        per shared param, or None for zeros."""

    @abstractmethod
    def step(self, z: np.ndarray, y: np.ndarray, hyper: StepHyper) -> float:
        """One optimizer step on a batch; returns the batch loss (before the step)."""

    @abstractmethod
    def current(self) -> tuple[Params, Params]:
        """(trainable params, optimizer state) after the steps so far."""

    @abstractmethod
    def predict(self, params: Params, z: np.ndarray) -> dict[str, np.ndarray]:
        """Logits per head ("global", "personal") for embeddings z."""


def fresh_optimizer_state(manifest: Manifest, optimizer: str) -> Params:
    """Zero state for every trainable param (plus AdamW's step counter)."""
    state: Params = {}
    for p in manifest.trainable:
        if optimizer == "sgd":
            state[f"{p.name}.momentum_buffer"] = np.zeros(p.shape, np.float32)
        elif optimizer == "adamw":
            state[f"{p.name}.exp_avg"] = np.zeros(p.shape, np.float32)
            state[f"{p.name}.exp_avg_sq"] = np.zeros(p.shape, np.float32)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}; expected 'sgd' or 'adamw'")
    if optimizer == "adamw":
        state["step"] = np.zeros((), np.float32)
    return state


def global_norm(arrays: Params) -> float:
    """The joint L2 norm of all arrays (float64 sums)."""
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays.values()))


def step_bound(optimizer: str, hyper: StepHyper) -> float:
    """The most one step may move the params (global L2 norm) under hyper.max_grad_norm; 0 = no bound.

    The train-step graphs keep the gradient inside, so every backend clips the same way, in
    numpy, on the step: SGD moves by at most lr * max_grad_norm / (1 - momentum), the largest
    step clipped gradients can make through the momentum buffer (the buffer itself is not
    clipped). With momentum 0 that is exactly clipping the whole gradient the step applies
    (data, prox, correction, and weight decay, which torch's clip_grad_norm_ would leave out
    since torch adds it inside the optimizer). AdamW is not
    bounded: its step is normalized per coordinate, so a huge gradient does not make a huge
    step, and the divergence check in local_training covers what is left."""
    if optimizer != "sgd" or hyper.max_grad_norm <= 0 or not 0 <= hyper.momentum < 1:
        return 0.0
    return hyper.lr * hyper.max_grad_norm / (1 - hyper.momentum)


def clip_step(before: Params, after: Params, max_norm: float) -> Params | None:
    """`after` moved back towards `before` so the step after - before has global L2 norm <=
    max_norm, or None when it already has (or max_norm <= 0, or the step is non-finite)."""
    step = {k: after[k].astype(np.float64) - before[k] for k in after}
    norm = global_norm(step)
    if max_norm <= 0 or not math.isfinite(norm) or norm <= max_norm:
        return None
    factor = max_norm / norm
    return {k: (before[k] + step[k] * factor).astype(after[k].dtype) for k in after}
