"""Baselines on the same splits and the same backend: each device alone, and everyone's
data pooled on one machine."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.edge_runtime.local_training import train_locally
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.trainer import make_backend
from fedge.tools.datasets import FederatedDataset


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y)) if len(y) else float("nan")


def local_only(model: ModelRuntime, data: FederatedDataset, hyper: TaskHyper, epochs: int, backend: str,
               seed: int) -> dict:
    """Each device trains the whole trainable model on its own data for `epochs` epochs and
    is scored on its own held-out split (personal head when there is one)."""
    be = make_backend(backend, model.dir, model.manifest, hyper.optimizer)
    head = "personal" if "personal" in model.manifest.heads else "global"
    accs, per_device = [], {}
    for i, client in enumerate(data.clients):
        z = model.embed(client.x_train)
        shared, personal = model.initial("shared"), model.initial("personal")
        res = train_locally(be, model.manifest, shared, personal, None, z, client.y_train,
                            replace(hyper, epochs=epochs), np.random.default_rng([seed, i]))
        params = {**{k: shared[k] + d for k, d in res.shared_delta.items()}, **res.personal}
        if len(client.y_test):
            accs.append(_accuracy(be.predict(params, model.embed(client.x_test))[head], client.y_test))
            per_device[client.client_id] = accs[-1]
    return {"accuracy_mean": float(np.mean(accs)), "accuracy_min": float(np.min(accs)), "epochs": epochs,
            "accuracy_per_device": per_device}


def central(model: ModelRuntime, data: FederatedDataset, hyper: TaskHyper, epochs: int, backend: str,
            seed: int) -> dict:
    """One model on the pooled training data, scored on the union of the held-out splits."""
    be = make_backend(backend, model.dir, model.manifest, hyper.optimizer)
    x, y = data.pooled_train()
    xt, yt = data.union_test()
    shared, personal = model.initial("shared"), model.initial("personal")
    res = train_locally(be, model.manifest, shared, personal, None, model.embed(x), y,
                        replace(hyper, epochs=epochs), np.random.default_rng([seed, 10**6]))
    params = {**{k: shared[k] + d for k, d in res.shared_delta.items()}, **res.personal}
    logits = be.predict(params, model.embed(xt))
    return {"accuracy": _accuracy(logits["global" if "global" in logits else "personal"], yt), "epochs": epochs}

