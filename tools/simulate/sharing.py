"""One copy of the model for a whole in-memory fleet: what lets 10,000 devices fit in 2 GB.

A DeviceRuntime loads its own copy of each model (manifest, initial values, the frozen
backbone's ONNX session), one trainer backend per optimizer (two more ONNX sessions), and
caches the backbone's output for its data. A board needs all of that; a simulated fleet of
N runtimes held N copies of the same read-only files, and every device is evaluated after
every round, so all N materialized them: about 2.6 MB per device in the fleet (1,000 devices,
2.7 GB peak RSS).

On the in-memory transport devices run one at a time in one thread, so the fleet shares:

- one ModelRuntime per model that keeps no embeddings: a device's backbone outputs exist only
  while it trains or evaluates, and are recomputed the next time (the backbone is frozen and
  deterministic, so the numbers are the same as from a cache);
- one trainer backend per (model, optimizer): every task restarts it from the device's own
  params and optimizer state (TrainerBackend.start), so nothing carries from one device to the
  next.

Everything that is the device's own stays its own: its data, its DeviceStore files (private
head, residuals, optimizer state) and its journal on disk. Not for the MQTT fleet: there each
device is a thread, tasks overlap, and a backend holds a task's state between steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.model_runtime import ModelRuntime

from .malicious import MaliciousRuntime


class UncachedModel(ModelRuntime):
    """A ModelRuntime shared by many devices: embeddings are computed on every call, never
    cached (a cache key is per device, and a fleet-wide cache would hold everyone's)."""

    def embed(self, x: np.ndarray, cache_key: int | None = None) -> np.ndarray:
        return super().embed(x, None)


class SharedModels:
    """The fleet's models (model_id -> UncachedModel) and trainer backends, loaded once."""

    def __init__(self, model_dirs: dict[str, Path]):
        self.models = {mid: UncachedModel(d, expected_model_id=mid) for mid, d in model_dirs.items()}
        self.backends: dict[tuple, object] = {}  # filled by DeviceRuntime._backend, keyed as there


class _Sharing:
    """Makes a DeviceRuntime (or a subclass) use the fleet's SharedModels instead of its own."""

    def __init__(self, *args, shared: SharedModels, **kwargs):
        super().__init__(*args, **kwargs)
        # DeviceRuntime looks models and backends up in these dicts and fills them on a miss:
        # pointing them at the fleet's makes every device load, and find, the same copy.
        self._models, self._backends = shared.models, shared.backends

    def model(self, model_id: str) -> ModelRuntime:
        if model_id not in self._models and model_id in self.model_dirs:  # never a caching copy in the pool
            self._models[model_id] = UncachedModel(self.model_dirs[model_id], expected_model_id=model_id)
        return super().model(model_id)

    def add_model(self, model_id: str, directory: str | Path) -> None:
        """A model fetched later joins the pool uncached too: a cached one would hand one
        device's embeddings to the next."""
        super().add_model(model_id, directory)
        self._models[model_id] = UncachedModel(directory, expected_model_id=model_id)


class SharedRuntime(_Sharing, DeviceRuntime):
    """An honest device on the fleet's shared model."""


class SharedMaliciousRuntime(_Sharing, MaliciousRuntime):
    """An attacking device (malicious.py) on the fleet's shared model."""
