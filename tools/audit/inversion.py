"""Analytic inversion of a dense layer's update (Geiping et al. 2020, Prop. 1). Pure numpy.

For a dense layer z = W x + b, one example's gradient is dL/dW = delta x^T and dL/db = delta,
so any row i with delta_i != 0 gives x = (dL/dW)_i / (dL/db)_i exactly. An update after one
SGD step is -lr times that gradient, and the ratio is the same. With several examples or
steps the rows mix them; a ReLU unit that fired for one example alone still isolates it, and
in a sum over devices, a unit that fired for one device's example alone isolates that
example even inside the sum: that is what the SecAgg audit measures.

The model is the benchmark MLP's shape (784-200-200-10, ReLU, softmax cross-entropy) with
its first layer trained in full, the setting where the first trainable layer sees the raw
input (mlp-784-lora in full mode); the forward and backward passes are written out here in
float64 so the audit needs no training runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Params = dict[str, np.ndarray]


def init_mlp(rng: np.random.Generator, widths=(784, 200, 200, 10)) -> Params:
    """He-initialized weights, zero biases."""
    out = {}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        out[f"w{i}"] = rng.normal(scale=math.sqrt(2.0 / a), size=(b, a))
        out[f"b{i}"] = np.zeros(b)
    return out


def _grads(p: Params, x: np.ndarray, y: np.ndarray) -> Params:
    """Mean cross-entropy gradients over the batch (x: (B, 784), y: (B,))."""
    layers = len(p) // 2
    acts, pre = [x], []
    for i in range(1, layers + 1):
        z = acts[-1] @ p[f"w{i}"].T + p[f"b{i}"]
        pre.append(z)
        acts.append(np.maximum(z, 0.0) if i < layers else z)
    logits = acts[-1]
    prob = np.exp(logits - logits.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    d = prob
    d[np.arange(len(y)), y] -= 1.0
    d /= len(y)
    g = {}
    for i in range(layers, 0, -1):
        g[f"w{i}"] = d.T @ acts[i - 1]
        g[f"b{i}"] = d.sum(axis=0)
        if i > 1:
            d = (d @ p[f"w{i}"]) * (pre[i - 2] > 0)
    return g


def local_update(p: Params, x: np.ndarray, y: np.ndarray, steps: int, lr: float) -> Params:
    """The device's update (new - old) after `steps` full-batch SGD steps on (x, y)."""
    q = {k: v.copy() for k, v in p.items()}
    for _ in range(steps):
        g = _grads(q, x, y)
        for k in q:
            q[k] -= lr * g[k]
    return {k: q[k] - p[k] for k in p}


def invert_rows(dw: np.ndarray, db: np.ndarray, rel_eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, candidate inputs dw_i / db_i) for every row whose bias moved."""
    scale = np.abs(db).max() if db.size else 0.0
    rows = np.flatnonzero(np.abs(db) > rel_eps * scale) if scale > 0 else np.array([], dtype=int)
    return rows, dw[rows] / db[rows, None]


@dataclass(frozen=True)
class Match:
    relative_error: float
    cosine: float
    psnr: float


def psnr(estimate: np.ndarray, truth: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.clip(estimate, 0.0, peak) - truth) ** 2))
    return 100.0 if mse <= 1e-10 else 10.0 * math.log10(peak**2 / mse)


def match(estimate: np.ndarray, truth: np.ndarray) -> Match:
    norm = float(np.linalg.norm(truth))
    rel = float(np.linalg.norm(estimate - truth)) / norm if norm else float("inf")
    cos = float(estimate @ truth) / (float(np.linalg.norm(estimate)) * norm + 1e-30)
    return Match(rel, cos, psnr(estimate, truth))
