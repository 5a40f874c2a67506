"""The trainable part of a fedge model in eager torch, for the train-step benchmark only.

Same work as one device step (models/graphs.py): from cached embeddings z (N, d), the dense
layers after the frozen backbone (frozen weight/bias, trainable LoRA A/B), both heads, loss =
CE(global head) + CE(personal head), then torch.optim.SGD. Frozen values come from the
artifact directory's params_init.npz, so given the same batches and hyperparameters the loss
matches the ONNX backends step for step.

Nothing outside tools/bench/train_step_worker.py may import this module: fedge never
depends on torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedge.edge_runtime.kernel.manifest import Manifest


class TorchReference(nn.Module):
    """Dense/LoRA stack + heads on embeddings; parameter names follow the manifest."""

    def __init__(self, manifest: Manifest, values: dict[str, np.ndarray]):
        super().__init__()
        spec = manifest.spec
        depth = 0
        for layer in spec["layers"]:
            if layer["mode"] != "frozen":
                break
            depth += 1
        self.layers = spec["layers"][depth:]
        self.scale = spec["lora_alpha"] / spec["lora_rank"]
        self.heads = manifest.heads
        roles = {p.name: p.role for p in manifest.params}
        # nn.Module names may not contain dots: "fc1.lora_a" is kept as "fc1__lora_a".
        self.p = nn.ParameterDict()
        needed = [f"{layer['name']}.{k}" for layer in self.layers for k in ("weight", "bias", "lora_a", "lora_b")]
        needed += [f"head_{h}.{k}" for h in self.heads for k in ("weight", "bias")]
        for name in needed:
            if name in roles:
                value = torch.from_numpy(np.array(values[name], np.float32))
                self.p[name.replace(".", "__")] = nn.Parameter(value, requires_grad=roles[name] != "frozen")

    def _get(self, name: str) -> torch.Tensor:
        return self.p[name.replace(".", "__")]

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        h = z
        for layer in self.layers:
            n = layer["name"]
            pre = h @ self._get(f"{n}.weight") + self._get(f"{n}.bias")
            if layer["mode"] == "lora":
                pre = pre + self.scale * ((h @ self._get(f"{n}.lora_a")) @ self._get(f"{n}.lora_b"))
            slope = layer.get("negative_slope", 0.01)
            act = {"relu": F.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": F.gelu,
                   "leaky_relu": lambda v: F.leaky_relu(v, slope)}.get(layer["activation"])  # noqa: B023
            h = act(pre) if act else pre
        return {hd: h @ self._get(f"head_{hd}.weight") + self._get(f"head_{hd}.bias") for hd in self.heads}

    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


class TorchStep:
    """start/step in the shape of a TrainerBackend, SGD only (what the benchmark measures)."""

    name = "torch"

    def __init__(self, artifact_dir, manifest: Manifest, threads: int = 1):
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)  # onnxruntime runs with inter_op_num_threads=1
        except RuntimeError:
            pass  # already set in this process
        with np.load(Path(artifact_dir) / "params_init.npz", allow_pickle=False) as data:
            values = {p.name: data[p.name] for p in manifest.params}
        self.model = TorchReference(manifest, values)

    def start(self, lr: float, momentum: float, weight_decay: float = 0.0) -> None:
        self.opt = torch.optim.SGD(self.model.trainable(), lr=lr, momentum=momentum, weight_decay=weight_decay)

    def step(self, z: np.ndarray, y: np.ndarray) -> float:
        zt, yt = torch.from_numpy(z), torch.from_numpy(y)
        self.opt.zero_grad(set_to_none=True)
        logits = self.model(zt)
        loss = sum(F.cross_entropy(lg, yt) for lg in logits.values())
        loss.backward()
        self.opt.step()
        return float(loss.detach())
