"""Baselines on the same splits and the same backend: each device alone, and everyone's
data pooled on one machine."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from fedge.edge_runtime.kernel.errors import Diverged
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.edge_runtime.local_training import train_locally
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.trainer import make_backend
from fedge.tools.datasets import FederatedDataset


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y)) if len(y) else float("nan")


UNSTABLE_RATIO, UNSTABLE_MARGIN = 2.0, 0.1  # nats: a last epoch this far above the best one did not recover


def unstable(epoch_losses: tuple[float, ...]) -> bool:
    """A run whose last epoch's mean loss ends over twice (and 0.1 nats over) its best epoch's:
    a spike it did not recover from, so its score is no ceiling (or floor) to compare with."""
    if not epoch_losses:
        return False
    best, last = min(epoch_losses), epoch_losses[-1]
    return last > UNSTABLE_RATIO * best and last > best + UNSTABLE_MARGIN


def _long_run(hyper: TaskHyper, epochs: int) -> TaskHyper:
    """A baseline's hyperparameters: the devices' own for many epochs, without the loss-ratio
    guard. That guard declines a federated task whose loss spikes (a task is a couple of
    epochs); a run of rounds x epochs on one device's few examples spikes and recovers, and a
    baseline measures what it ends at. A non-finite loss still stops it (Diverged)."""
    return replace(hyper, epochs=epochs, divergence_factor=0.0)


def epoch_lr(lr: float, epoch: int, epochs: int) -> float:
    """The learning rate of the centralized baseline's `epoch` (0-based) of `epochs`: a cosine from `lr` down
    towards 0, one value per epoch."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


def train_decayed(be, manifest, shared: dict, personal: dict, z: np.ndarray, y: np.ndarray, hyper: TaskHyper,
                  rng: np.random.Generator) -> tuple[dict, tuple[float, ...]]:
    """The centralized baseline's training: hyper.epochs epochs of train_locally, one at a time
    at epoch_lr, the optimizer state carried from each to the next (and hyper.max_steps counted
    over the whole run), without the proximal term (no global model to stay near). Returns the
    trained params (shared and personal) and each epoch's mean loss.

    Why decay: at the devices' constant rate the last iterate of a long run is a noisy sample
    (plain digits over 6 devices, lr 0.02 and momentum 0.9, 8 epochs pooled: 0.742 where the
    federated average of short tasks reached 0.933), so the centralized "ceiling" sat below
    the federated model. A federated round averages several devices' iterates; one run on
    pooled data needs its rate decayed to settle."""
    params, state, losses, left = {**shared, **personal}, None, [], hyper.max_steps
    for epoch in range(hyper.epochs):
        step = replace(hyper, epochs=1, lr=epoch_lr(hyper.lr, epoch, hyper.epochs), max_steps=left, mu=0.0)
        res = train_locally(be, manifest, {k: params[k] for k in shared}, {k: params[k] for k in personal}, state,
                            z, y, step, rng)
        params = {**params, **{k: params[k] + d for k, d in res.shared_delta.items()}, **res.personal}
        state, losses = res.opt_state, [*losses, *res.epoch_losses]
        if hyper.max_steps:
            left -= res.steps
            if left <= 0:
                break
    return params, tuple(losses)


def local_only(model: ModelRuntime, data: FederatedDataset, hyper: TaskHyper, epochs: int, backend: str,
               seed: int) -> dict:
    """Each device trains the whole trainable model on its own data for `epochs` epochs and
    is scored on its own held-out split (personal head when there is one). A device whose
    run diverges keeps the model it started from, as a device that declines does, and is
    listed under `diverged`."""
    be = make_backend(backend, model.dir, model.manifest, hyper.optimizer)
    head = "personal" if "personal" in model.manifest.heads else "global"
    accs, per_device, diverged, wobbly = [], {}, [], []
    for i, client in enumerate(data.clients):
        z = model.embed(client.x_train)
        shared, personal = model.initial("shared"), model.initial("personal")
        try:
            res = train_locally(be, model.manifest, shared, personal, None, z, client.y_train,
                                _long_run(hyper, epochs), np.random.default_rng([seed, i]))
            params = {**{k: shared[k] + d for k, d in res.shared_delta.items()}, **res.personal}
            if unstable(res.epoch_losses):
                wobbly.append(client.client_id)
        except Diverged:
            diverged.append(client.client_id)
            params = {**shared, **personal}
        if len(client.y_test):
            accs.append(_accuracy(be.predict(params, model.embed(client.x_test))[head], client.y_test))
            per_device[client.client_id] = accs[-1]
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_min": float(np.min(accs)), "epochs": epochs,
            "accuracy_per_device": per_device, "diverged": diverged, "unstable": wobbly}


def central(model: ModelRuntime, data: FederatedDataset, hyper: TaskHyper, epochs: int, backend: str,
            seed: int) -> dict:
    """One model on the pooled training data, scored on the union of the held-out splits."""
    be = make_backend(backend, model.dir, model.manifest, hyper.optimizer)
    x, y = data.pooled_train()
    xt, yt = data.union_test()
    shared, personal = model.initial("shared"), model.initial("personal")
    params, losses = train_decayed(be, model.manifest, shared, personal, model.embed(x), y,
                                   _long_run(hyper, epochs), np.random.default_rng([seed, 10**6]))
    logits = be.predict(params, model.embed(xt))
    return {"accuracy": _accuracy(logits["global" if "global" in logits else "personal"], yt), "epochs": epochs,
            "epoch_losses": list(losses), "unstable": unstable(losses)}

