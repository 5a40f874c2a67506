"""Pure-numpy reference backend for the dense/LoRA/head part of a model.

It is the readable definition of what the graphs compute, used as an oracle in tests and as
a fallback where no onnxruntime is installed. Float64 internally when `dtype` is float64
(for finite-difference checks), float32 otherwise.
"""

from __future__ import annotations

import numpy as np

from ..kernel.activations import DEFAULT_NEGATIVE_SLOPE, activate, activation_backward
from ..kernel.files import load_npz
from ..kernel.manifest import Manifest
from .base import Params, StepHyper, TrainerBackend, clip_step, fresh_optimizer_state, step_bound


def load_frozen(artifact_dir, manifest: Manifest) -> Params:
    values = load_npz(f"{artifact_dir}/params_init.npz")
    return {p.name: values[p.name] for p in manifest.by_role("frozen")}


class NumpyModel:
    """Forward and backward of the trainable part, from the manifest's spec."""

    def __init__(self, spec: dict, frozen: Params, dtype=np.float32):
        self.spec = spec
        self.dtype = dtype
        self.frozen = {k: v.astype(dtype) for k, v in frozen.items()}
        depth = 0
        for layer in spec["layers"]:
            if layer["mode"] != "frozen":
                break
            depth += 1
        self.layers = spec["layers"][depth:]
        self.scale = spec["lora_alpha"] / spec["lora_rank"]
        self.heads = {"dual": ("global", "personal"), "global": ("global",), "personal": ("personal",)}[spec["head"]]

    def _get(self, params: Params, name: str) -> np.ndarray:
        return params[name] if name in params else self.frozen[name]

    def forward(self, params: Params, z: np.ndarray):
        h = z.astype(self.dtype)
        traces = []
        for layer in self.layers:
            n = layer["name"]
            w = self._get(params, f"{n}.weight")
            pre = h @ w + self._get(params, f"{n}.bias")
            u = None
            if layer["mode"] == "lora":
                u = h @ self._get(params, f"{n}.lora_a")
                pre = pre + self.scale * (u @ params[f"{n}.lora_b"])
            out = activate(layer["activation"], pre, layer.get("negative_slope", DEFAULT_NEGATIVE_SLOPE))
            traces.append((layer, h, pre, u, out))
            h = out
        logits = {hd: h @ params[f"head_{hd}.weight"] + params[f"head_{hd}.bias"] for hd in self.heads}
        return h, traces, logits

    def loss_and_grads(self, params: Params, z: np.ndarray, y: np.ndarray) -> tuple[float, Params]:
        feats, traces, logits = self.forward(params, z)
        n = z.shape[0]
        grads: Params = {}
        loss = 0.0
        dfeats = np.zeros_like(feats)
        for hd, lg in logits.items():
            shifted = lg - lg.max(axis=1, keepdims=True)
            logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
            loss += float(-logp[np.arange(n), y].mean())
            d = np.exp(logp)
            d[np.arange(n), y] -= 1.0
            d /= n
            grads[f"head_{hd}.weight"] = feats.T @ d
            grads[f"head_{hd}.bias"] = d.sum(axis=0)
            dfeats += d @ params[f"head_{hd}.weight"].T
        dh = dfeats
        for i in range(len(traces) - 1, -1, -1):
            layer, x, pre, u, out = traces[i]
            n_ = layer["name"]
            dpre = activation_backward(layer["activation"], dh, pre, out,
                                       layer.get("negative_slope", DEFAULT_NEGATIVE_SLOPE))
            if layer["mode"] in ("shared", "personal"):
                grads[f"{n_}.weight"] = x.T @ dpre
                grads[f"{n_}.bias"] = dpre.sum(axis=0)
            du = None
            if layer["mode"] == "lora":
                grads[f"{n_}.lora_b"] = self.scale * (u.T @ dpre)
                du = self.scale * (dpre @ params[f"{n_}.lora_b"].T)
                if f"{n_}.lora_a" in params:  # frozen when the spec says lora_train_a = false
                    grads[f"{n_}.lora_a"] = x.T @ du
            dh = dpre @ self._get(params, f"{n_}.weight").T
            if du is not None:
                dh = dh + du @ self._get(params, f"{n_}.lora_a").T
        return loss, grads


def apply_optimizer(optimizer: str, params: Params, grads: Params, state: Params, hyper: StepHyper) -> None:
    """In-place torch-semantics SGD(momentum) / AdamW update of `params` and `state`."""
    if optimizer == "adamw":
        state["step"] = np.asarray(state["step"] + 1, dtype=state["step"].dtype)
        t = float(state["step"])
    for name, g in grads.items():
        p = params[name]
        if optimizer == "sgd":
            g = g + hyper.weight_decay * p
            buf = hyper.momentum * state[f"{name}.momentum_buffer"] + g
            state[f"{name}.momentum_buffer"] = buf.astype(p.dtype)
            params[name] = (p - hyper.lr * buf).astype(p.dtype)
        else:
            p = p * (1 - hyper.lr * hyper.weight_decay)
            m = hyper.beta1 * state[f"{name}.exp_avg"] + (1 - hyper.beta1) * g
            v = hyper.beta2 * state[f"{name}.exp_avg_sq"] + (1 - hyper.beta2) * g * g
            bc1, bc2 = 1 - hyper.beta1**t, 1 - hyper.beta2**t
            params[name] = (p - hyper.lr / bc1 * m / (np.sqrt(v) / np.sqrt(bc2) + hyper.eps)).astype(p.dtype)
            state[f"{name}.exp_avg"], state[f"{name}.exp_avg_sq"] = m.astype(p.dtype), v.astype(p.dtype)


class NumpyBackend(TrainerBackend):
    name = "numpy"

    def __init__(self, artifact_dir, manifest: Manifest, optimizer: str, dtype=np.float32):
        super().__init__(artifact_dir, manifest, optimizer)
        self.model = NumpyModel(manifest.spec, load_frozen(artifact_dir, manifest), dtype)
        self.dtype = dtype
        self.shared = {p.name for p in manifest.by_role("shared")}

    def start(self, params, opt_state, anchor, correction):
        self.params = {k: np.array(v, dtype=self.dtype) for k, v in params.items()}
        state = opt_state if opt_state is not None else fresh_optimizer_state(self.manifest, self.optimizer)
        self.state = {k: np.array(v, dtype=self.dtype) for k, v in state.items()}
        self.anchor = {k: np.asarray(v, self.dtype) for k, v in anchor.items()}
        self.correction = {k: np.asarray(v, self.dtype) for k, v in (correction or {}).items()}

    def step(self, z, y, hyper: StepHyper) -> float:
        loss, grads = self.model.loss_and_grads(self.params, z, y)
        for name in self.shared:
            grads[name] = grads[name] + hyper.mu * (self.params[name] - self.anchor[name])
            if name in self.correction:
                grads[name] = grads[name] + self.correction[name]
        bound = step_bound(self.optimizer, hyper)  # the same rule as the graph backends
        before = {k: v.copy() for k, v in self.params.items()} if bound else None
        apply_optimizer(self.optimizer, self.params, grads, self.state, hyper)
        if before is not None:
            self.params.update(clip_step(before, self.params, bound) or {})
        return loss

    def current(self):
        return ({k: v.astype(np.float32) for k, v in self.params.items()},
                {k: v.astype(np.float32) for k, v in self.state.items()})

    def predict(self, params, z):
        return self.model.forward({k: np.asarray(v, self.dtype) for k, v in params.items()}, z)[2]
