"""The device side of `fedge bench async`: every task trains through the real device runtime.

A task is what a device does in the product: DeviceRuntime.handle_task on an encoded
TrainTask (the model's shared params as the coordinator sends them, the simulator's default
compression: int8 with error feedback), local SGD through the portable ONNX Runtime backend
on a model built by build_artifacts, and an Update frame. The coordinator's side decodes
that frame as it admits one: decode_report (size, header, checksum, schema), then
decode_delta (shapes, finiteness, dequantize). Bytes are the encoded frames' lengths.

Many devices, one model copy: devices are SharedRuntimes on one SharedModels
(tools/simulate/sharing.py), built when a device trains and dropped after; what is the
device's own (its error-feedback residual, last task) lives in its DeviceStore
folder under a scratch directory, as in `fedge simulate`.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from fedge.coordinator.validation import decode_delta, decode_report
from fedge.edge_runtime.device import LocalData
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, TrainTask, Update
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.trainer import make_backend
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec
from fedge.tools.simulate.sharing import SharedModels, SharedRuntime

BACKEND = "portable"  # ONNX Runtime inference graphs + the portable training step, as `fedge simulate` uses
MAX_FRAME = 64 << 20  # the coordinator's default message limit is far above this model's frames


class DeviceTask:
    """The data, a small MLP (one shared hidden layer, global head), real local training,
    and the measured wire sizes. Same interface as the runners expect: init, clients,
    bytes_down, bytes_up, train(params, device, cfg, salt) -> delta, accuracy(params)."""

    def __init__(self, data, seed: int, hidden: int = 64):
        self.clients = data.clients
        dim = int(np.prod(data.input_shape))
        self.seed = seed
        self.scratch = Path(tempfile.mkdtemp(prefix="fedge-bench-async-"))
        weakref.finalize(self, shutil.rmtree, self.scratch, True)  # only the folder made here
        spec = mlp_spec(dim, data.num_classes, hidden=(hidden,), modes=("shared",), head="global",
                        name=f"bench-async-mlp{hidden}", init_seed=seed)
        self.art_dir = self.scratch / "artifacts"
        self.manifest = build_artifacts(spec, self.art_dir, ort_training=False)
        self.model_id = self.manifest.model_id
        self.shared = SharedModels({self.model_id: self.art_dir})
        model = self.shared.models[self.model_id]
        self.init = model.initial("shared")
        self.personal = model.initial("personal")  # empty with a global head; the eval graph takes it all
        self.shapes = {p.name: tuple(p.shape) for p in self.manifest.by_role("shared")}
        self.compression = CompressionSpec()  # the simulator's default: int8, dense, error feedback
        self.evaluator = make_backend(BACKEND, self.art_dir, self.manifest, "sgd")
        x_test = np.concatenate([c.x_test for c in data.clients]).reshape(-1, dim)
        self.z_test = model.embed(x_test)
        self.y_test = np.concatenate([c.y_test for c in data.clients])
        self.params_bytes = encode_dense(self.init)
        self.bytes_down = len(encode_message(self._task(self.init, 0, 0, "d00000", TaskHyper())))
        self.frame_sizes: set[int] = set()
        self.declines: dict[str, int] = {}  # reason -> count, e.g. "diverged" (the local divergence guard)
        # The uplink size a task will have, measured on a real frame (int8 dense: the same for
        # every device); the virtual clock needs it before a device trains.
        self.bytes_up = len(self._frame(self.init, 0, 0, TaskHyper(max_steps=1)))

    def _task(self, params, version: int, salt: int, device_id: str, hyper: TaskHyper) -> TrainTask:
        return TrainTask(round_id=salt, task_id=f"{salt:016d}{device_id:>16}"[:32], device_id=device_id,
                         model_id=self.model_id, model_version=version, params=encode_dense(params), hyper=hyper,
                         compression=self.compression, seed=self.seed)

    def _frame(self, params, device: int, salt: int, hyper: TaskHyper) -> bytes | None:
        """The device's Update frame, or None when it declined (counted in self.declines)."""
        c = self.clients[device]
        dim = int(np.prod(c.x_train.shape[1:]))
        runtime = SharedRuntime(f"d{device:05d}", LocalData(c.x_train.reshape(-1, dim), c.y_train,
                                                            c.x_test.reshape(-1, dim), c.y_test),
                                {self.model_id: self.art_dir}, self.scratch / "devices", backend=BACKEND,
                                seed=self.seed, shared=self.shared)
        reply = runtime.handle_task(self._task(params, 0, salt, runtime.device_id, hyper))
        if not isinstance(reply, Update):
            self.declines[reply.reason] = self.declines.get(reply.reason, 0) + 1
            return None
        return encode_message(reply)

    def train(self, params, device: int, cfg, salt: int) -> dict[str, np.ndarray] | None:
        """One real task on `device` from `params`: the delta as the coordinator decodes it,
        or None when the device declined the task."""
        hyper = TaskHyper(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr)
        frame = self._frame(params, device, salt, hyper)
        if frame is None:
            return None
        self.frame_sizes.add(len(frame))
        update = decode_report(frame, MAX_FRAME)
        return decode_delta(update.payload, self.shapes)

    def accuracy(self, params) -> float:
        logits = self.evaluator.predict({**params, **self.personal}, self.z_test)["global"]
        return float(np.mean(np.argmax(logits, axis=1) == self.y_test))
