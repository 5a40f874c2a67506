"""The plain audit's update from the device's own training backend, not a numpy copy: the real
`mlp-784-lora` spec in full mode (tools/simulate/personalization.py: its LoRA layers trained in
full, so fc1 sees the raw image), its ONNX Runtime training artifacts built as a fleet builds
them, and SGD steps run by the backend a device runs (edge_runtime/trainer/ort_training.py).
The first layer's update is then inverted as inversion.py does. The runtime trains in float32,
so "exact" means up to float32 rounding (a relative error near 1e-7), not 1e-16.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

MODEL = "mlp-784-lora"
FIRST = "fc1"  # the first trainable dense layer: weight (in, out), y = x @ W + b


class RuntimeUpdates:
    """Artifacts built once (about 13 s on this machine), then one update per call."""

    def __init__(self, workdir: str | None = None):
        from fedge.edge_runtime.kernel.manifest import load_manifest
        from fedge.models.build import build_artifacts
        from fedge.models.spec import load_spec
        from fedge.tools.simulate.personalization import personalized_spec

        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fedge-audit-")
        self.artifacts = Path(workdir or self._tmp.name)
        build_artifacts(personalized_spec(load_spec(MODEL), "full"), self.artifacts, ort_training=True)
        self.manifest = load_manifest(self.artifacts)
        with np.load(self.artifacts / "params_init.npz") as data:
            self.init = {p.name: data[p.name] for p in self.manifest.trainable}
        self.label = f"{MODEL} in full mode, ONNX Runtime training backend (SGD, float32)"
        self._backend = None  # one training session, restarted from the initial weights for every update

    def first_layer_update(self, x: np.ndarray, y: np.ndarray, steps: int, lr: float) -> tuple[np.ndarray, np.ndarray]:
        """(dW (out, in), db (out,)) of fc1 after `steps` SGD steps on the batch (x, y): the
        update (new - old) a device would upload, in inversion.invert_rows' layout."""
        from fedge.edge_runtime.trainer.base import StepHyper
        from fedge.edge_runtime.trainer.ort_training import OrtTrainingBackend

        if self._backend is None:
            self._backend = OrtTrainingBackend(self.artifacts, self.manifest, "sgd")
        backend = self._backend
        backend.start(self.init, None, self.init, None)  # every device starts from the same global model
        for _ in range(steps):
            backend.step(np.asarray(x, dtype=np.float32), np.asarray(y), StepHyper(lr=lr))
        new, _ = backend.current()
        dw = (new[f"{FIRST}.weight"] - self.init[f"{FIRST}.weight"]).astype(np.float64).T
        return dw, (new[f"{FIRST}.bias"] - self.init[f"{FIRST}.bias"]).astype(np.float64)

    def close(self) -> None:
        self._backend = None
        if self._tmp is not None:
            self._tmp.cleanup()
