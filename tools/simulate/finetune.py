"""Head-only fine-tuning of the global model on one device's data: the `finetune` mode's
personalized model, and what a new device (one that never trained) does with the global model.

It runs on the simulator's side, from the device's data, but through the code a device would
run: the same trainer backend and `train_locally`. The global model's body is frozen for this,
so its output (the head's input features) is computed once per call with the numpy reference
forward, and the head trains as a model of its own (no layers, one private head) built for it.
A device would need the same thing as a method (see the report of issue 4); the devices here
keep their own state untouched.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_runtime.local_training import train_locally
from edge_runtime.model_runtime import ModelRuntime
from edge_runtime.protocol import TaskHyper
from edge_runtime.trainer import make_backend
from edge_runtime.trainer.numpy_ref import NumpyModel, load_frozen
from models.build import build_artifacts
from models.spec import mlp_spec
from tools.datasets import ClientData

Params = dict[str, np.ndarray]


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) == y))


class HeadTuner:
    """Scores a device with the global head as is, and after `steps` head-only SGD steps."""

    def __init__(self, model: ModelRuntime, backend: str, out_dir: str | Path, hyper: TaskHyper):
        if "global" not in model.manifest.heads:
            raise ValueError(f"model {model.manifest.name} has no global head to fine-tune")
        spec = model.manifest.spec
        self.model = model
        self.body = NumpyModel(spec, load_frozen(model.dir, model.manifest))
        self.placeholder = model.initial("personal")  # the reference forward scores every head
        features = next(p.shape[0] for p in model.manifest.params if p.name == "head_global.weight")
        head_spec = mlp_spec(features, spec["num_classes"], hidden=(), head="personal", name=f"{spec['name']}-head")
        manifest = build_artifacts(head_spec, out_dir, ort_training=backend == "ort-training")
        self.head_manifest = manifest
        self.backend = make_backend(backend, out_dir, manifest, hyper.optimizer)
        self.hyper = hyper
        self._z: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # client id -> backbone output (train, test)

    def features(self, shared: Params, z: np.ndarray) -> np.ndarray:
        """(n, head input features) from the global model's body."""
        return self.body.forward({**shared, **self.placeholder}, z)[0]

    def score(self, client: ClientData, shared: Params, steps: int, rng: np.random.Generator) -> tuple[float, float | None]:
        """(accuracy of the global head, accuracy after `steps` fine-tuning steps or None when 0)
        on the client's held-out split."""
        if client.client_id not in self._z:
            self._z[client.client_id] = (self.model.embed(client.x_train), self.model.embed(client.x_test))
        z_train, z_test = self._z[client.client_id]
        head = {"head_personal.weight": shared["head_global.weight"], "head_personal.bias": shared["head_global.bias"]}
        f_test = self.features(shared, z_test)
        before = _accuracy(self.backend.predict(head, f_test)["personal"], client.y_test)
        if steps == 0:
            return before, None
        hyper = replace(self.hyper, epochs=steps, max_steps=steps, mu=0.0)  # epochs: enough to reach max_steps
        result = train_locally(self.backend, self.head_manifest, {}, head, None, self.features(shared, z_train),
                               client.y_train, hyper, rng)
        return before, _accuracy(self.backend.predict(result.personal, f_test)["personal"], client.y_test)
