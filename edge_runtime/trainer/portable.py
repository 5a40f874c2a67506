"""Backend `portable`: the train-step graph (standard ONNX ops) on a stock onnxruntime
InferenceSession. Runs on any architecture onnxruntime has a wheel for (x86_64, aarch64).

Gradient clipping (StepHyper.max_grad_norm) is not in the graph (artifacts already on devices
have no such input): each step is bounded in numpy, as base.step_bound says."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..kernel.errors import BackendUnavailable
from ..kernel.manifest import Manifest
from .base import StepHyper, TrainerBackend, clip_step, fresh_optimizer_state, step_bound


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(
            "onnxruntime is not installed: `pip install 'fedge[device]'` (stock onnxruntime) "
            "or `pip install 'fedge[ort-training]'` (x86_64 training build)"
        ) from None
    return onnxruntime


def make_session(path: Path, threads: int = 1):
    """A CPU session. One intra-op thread by default: edge boards run one task at a time,
    and small graphs are slower with a thread pool."""
    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


_HYPER_FIELDS = {
    "sgd": ("lr", "weight_decay", "mu", "momentum"),
    "adamw": ("lr", "weight_decay", "mu", "beta1", "beta2", "eps"),
}


class PortableBackend(TrainerBackend):
    name = "portable"

    def __init__(self, artifact_dir, manifest: Manifest, optimizer: str, threads: int = 1):
        super().__init__(artifact_dir, manifest, optimizer)
        self.session = make_session(Path(artifact_dir) / f"train_step_{optimizer}.onnx", threads)
        self.eval_session = make_session(Path(artifact_dir) / "eval.onnx", threads)
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.shared = [p.name for p in manifest.by_role("shared")]
        self._ort = import_onnxruntime()

    def start(self, params, opt_state, anchor, correction):
        state = opt_state if opt_state is not None else fresh_optimizer_state(self.manifest, self.optimizer)
        arrays = {k: np.ascontiguousarray(v, np.float32) for k, v in {**params, **state}.items()}
        for name in self.shared:
            arrays[f"{name}.global"] = np.ascontiguousarray(anchor[name], np.float32)
            c = correction.get(name) if correction else None
            arrays[f"{name}.correction"] = (np.ascontiguousarray(c, np.float32) if c is not None
                                            else np.zeros_like(arrays[name]))
        # Params and state stay OrtValues between steps: no numpy round trip per step.
        self.feeds = {k: self._ortvalue(v) for k, v in arrays.items()}
        self.param_names = list(params)
        self.state_names = list(state)
        self._hyper_key = None

    def _ortvalue(self, array: np.ndarray):
        return self._ort.OrtValue.ortvalue_from_numpy(array)

    def step(self, z, y, hyper: StepHyper) -> float:
        feeds = self.feeds
        feeds["z"] = self._ortvalue(np.ascontiguousarray(z, np.float32))
        feeds["y"] = self._ortvalue(np.ascontiguousarray(y, np.int64))
        key = tuple(getattr(hyper, f) for f in _HYPER_FIELDS[self.optimizer])
        if key != self._hyper_key:
            for field, value in zip(_HYPER_FIELDS[self.optimizer], key):
                feeds[field] = self._ortvalue(np.asarray(value, np.float32))
            self._hyper_key = key
        if self.optimizer == "adamw":
            feeds["step"] = self._ortvalue(np.asarray(feeds["step"].numpy() + 1, np.float32))
        bound = step_bound(self.optimizer, hyper)
        # Copies: the OrtValues they come from are dropped below, and numpy() may be a view of them.
        before = {k: feeds[k].numpy().copy() for k in self.param_names} if bound else None
        outputs = self.session.run_with_ort_values(self.output_names, feeds)
        loss = 0.0
        for name, value in zip(self.output_names, outputs):
            if name == "loss":
                loss = float(value.numpy())
            else:
                feeds[name[: -len(".new")]] = value
        if before is not None:
            clipped = clip_step(before, {k: feeds[k].numpy() for k in self.param_names}, bound)
            for k, v in (clipped or {}).items():
                feeds[k] = self._ortvalue(np.ascontiguousarray(v, np.float32))
        return loss

    def current(self):
        return (
            {k: self.feeds[k].numpy().copy() for k in self.param_names},
            {k: np.asarray(self.feeds[k].numpy()).copy() for k in self.state_names},
        )

    def predict(self, params, z):
        feeds = {k: np.ascontiguousarray(v, np.float32) for k, v in params.items()}
        feeds["z"] = np.ascontiguousarray(z, np.float32)
        names = [o.name for o in self.eval_session.get_outputs()]
        return {n[len("logits_") :]: v for n, v in zip(names, self.eval_session.run(names, feeds))}
