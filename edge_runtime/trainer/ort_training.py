"""Backend `ort-training`: onnxruntime-training's on-device API on the artifacts under `ort/`
(written by models/ort_artifacts.py). x86_64 only: the training build has no other wheels.

The loss graph and its ORT-generated gradient match the portable train step exactly. The
optimizers are ORT's own kernels:

    sgd    ORT's SGD is plain  P -= lr * g:  no momentum, no weight decay. `step` raises
           ValueError for momentum != 0 or weight_decay != 0 rather than silently ignoring them.
    adamw  ORT's AdamWOptimizer kernel in its torch mode (adam_mode=0), which matches the
           portable graph (models/graphs.py). Note that onnxblock's AdamW / OptimType.AdamW emit
           HuggingFace mode (adam_mode=1): bias correction folded into the step size, so eps is
           effectively eps * sqrt(1 - beta2^t), and weight decay applied after the Adam update,
           P' = (P - lr * u) * (1 - lr * wd) instead of torch's P * (1 - lr * wd) - lr * u. Near
           zero gradients (fresh LoRA factors) that eps placement alone moves params by ~lr per
           step, so the artifacts switch the node to adam_mode=0. betas/eps/weight_decay are
           node attributes: fixed for a run (from the first step after `start`); changing them
           mid-run raises ValueError.

Gradient clipping (StepHyper.max_grad_norm): each step is bounded in numpy as base.step_bound
says. ORT's SGD step is lr * g with g the loss graph's whole gradient (data, prox, correction),
so that is exactly clipping g; AdamW is not bounded.

Optimizer state: ORT keeps AdamW's moments and step count inside its CheckpointState, and the
Python API neither reads nor writes them (only whole-checkpoint files). So `start` always begins
with a fresh optimizer (a given `opt_state` is ignored) and `current` returns an empty state
dict. For SGD nothing is lost (ORT's SGD has no state); AdamW's moments restart at each `start`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..kernel.artifact_layout import BAKED_ADAMW, OPTIMIZER_FILES, ORT_DIR, set_adamw_attributes
from ..kernel.errors import BackendUnavailable, UnsupportedByBackend
from ..kernel.manifest import Manifest
from ..kernel.ort_loader import load_ort_training
from .base import Params, StepHyper, TrainerBackend, clip_step, step_bound
from .portable import import_onnxruntime, make_session


class OrtTrainingBackend(TrainerBackend):
    name = "ort-training"

    def __init__(self, artifact_dir, manifest: Manifest, optimizer: str, threads: int = 1):
        super().__init__(artifact_dir, manifest, optimizer)
        # The manifest, not the folder: a build without the training build of onnxruntime lists
        # no ORT files, and an ort/ folder an earlier build left beside it is another model's.
        missing = [f for f in (f"{ORT_DIR}/training_model.onnx", f"{ORT_DIR}/checkpoint") if f not in manifest.files]
        if missing:
            raise BackendUnavailable(f"model {manifest.model_id} was built without ORT training artifacts (its "
                                     f"manifest lists no {', '.join(missing)}): rebuild it where "
                                     "onnxruntime-training is installed, or use the portable backend")
        self.api = load_ort_training("api")
        self.ort_dir = Path(artifact_dir) / ORT_DIR
        self.threads = threads
        self.eval_session = make_session(Path(artifact_dir) / "eval.onnx", threads)
        self.trainable = [p.name for p in manifest.trainable]
        self.shared = [p.name for p in manifest.by_role("shared")]
        self._tmp: tempfile.TemporaryDirectory | None = None  # rewritten AdamW graphs live here
        self.module = self.optim = None
        self.optim_hyper: tuple[float, ...] | None = None  # AdamW attributes of the live optimizer

    def _session_options(self):
        opts = import_onnxruntime().SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        return opts

    def start(self, params: Params, opt_state: Params | None, anchor: Params, correction: Params | None) -> None:
        # A fresh CheckpointState each run: ORT keeps optimizer moments in it (see module doc).
        state = self.api.CheckpointState.load_checkpoint(self.ort_dir / "checkpoint")
        self.module = self.api.Module(self.ort_dir / "training_model.onnx", state,
                                      session_options=self._session_options())
        # Only after Module exists: in 1.19.2 writing a parameter of a bare loaded state segfaults.
        for name in self.trainable:
            state.parameters[name] = np.ascontiguousarray(params[name], np.float32)
        self.state = state
        self.module.train()
        self.optim = self.optim_hyper = None  # made on the first step, once AdamW's hyperparameters are known
        extra: Params = {}
        for name in self.shared:
            extra[f"{name}.global"] = np.ascontiguousarray(anchor[name], np.float32)
            c = correction.get(name) if correction else None
            extra[f"{name}.correction"] = (np.ascontiguousarray(c, np.float32) if c is not None
                                           else np.zeros_like(extra[f"{name}.global"]))
        self.extra = extra
        self.input_names = list(self.module.input_names())

    def step(self, z: np.ndarray, y: np.ndarray, hyper: StepHyper) -> float:
        if self.module is None:
            raise RuntimeError("call start() before step()")
        self._ensure_optimizer(hyper)
        feeds = dict(self.extra)
        feeds["z"] = np.ascontiguousarray(z, np.float32)
        feeds["y"] = np.ascontiguousarray(y, np.int64)
        feeds["mu"] = np.asarray(hyper.mu, np.float32)
        bound = step_bound(self.optimizer, hyper)
        before = self._params() if bound else None
        _, data_loss = self.module(*[feeds[n] for n in self.input_names])  # forward + backward
        self.optim.set_learning_rate(float(hyper.lr))
        self.optim.step()
        self.module.lazy_reset_grad()
        if before is not None:
            for name, value in (clip_step(before, self._params(), bound) or {}).items():
                self.state.parameters[name] = np.ascontiguousarray(value, np.float32)
        return float(np.asarray(data_loss).reshape(()))

    def _params(self) -> Params:
        return {name: np.array(self.state.parameters[name].data, dtype=np.float32, copy=True)
                for name in self.trainable}

    def _ensure_optimizer(self, hyper: StepHyper) -> None:
        if self.optimizer == "sgd":
            if hyper.momentum != 0.0 or hyper.weight_decay != 0.0:
                raise UnsupportedByBackend(
                    "ort-training's SGD is plain SGD (no momentum, no weight decay): got "
                    f"momentum={hyper.momentum}, weight_decay={hyper.weight_decay}; set both to 0 "
                    "or use the portable backend"
                )
            wanted: tuple[float, ...] = ()
        else:
            wanted = (hyper.beta1, hyper.beta2, hyper.eps, hyper.weight_decay)
        if self.optim is not None:
            if wanted != self.optim_hyper:
                raise UnsupportedByBackend(
                    f"ort-training fixes AdamW's (beta1, beta2, eps, weight_decay) for a run: started with "
                    f"{self.optim_hyper}, now {wanted}; call start() again to change them"
                )
            return
        path = self.ort_dir / OPTIMIZER_FILES[self.optimizer]
        if self.optimizer == "adamw" and wanted != BAKED_ADAMW:
            path = self._adamw_graph(*wanted)
        self.optim = self.api.Optimizer(path, self.module)
        self.optim_hyper = wanted

    def _adamw_graph(self, beta1: float, beta2: float, eps: float, weight_decay: float) -> Path:
        """A copy of optimizer_adamw.onnx with other hyperparameters (onnx comes with the training build)."""
        import onnx

        model = onnx.load(str(self.ort_dir / OPTIMIZER_FILES["adamw"]))
        set_adamw_attributes(model, beta1, beta2, eps, weight_decay)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fedge-ort-")
        path = Path(self._tmp.name) / f"adamw-{beta1}-{beta2}-{eps}-{weight_decay}.onnx"
        onnx.save(model, str(path))
        return path

    def current(self) -> tuple[Params, Params]:
        if self.module is None:
            raise RuntimeError("call start() before current()")
        return self._params(), {}  # ORT's optimizer state cannot be read out (see module doc)

    def predict(self, params: Params, z: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
        feeds["z"] = np.ascontiguousarray(z, np.float32)
        names = [o.name for o in self.eval_session.get_outputs()]
        return {n[len("logits_") :]: v for n, v in zip(names, self.eval_session.run(names, feeds))}
