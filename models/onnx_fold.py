"""A BatchNormalization right after a dense layer, folded into that layer's weight and bias.

torch's Linear followed by BatchNorm1d in eval mode exports as Gemm -> BatchNormalization over
the (N, units) output: y = (x @ W + b - mean) * scale / sqrt(var + epsilon) + B, per feature.
That is one dense layer, W' = W * a and b' = (b - mean) * a + B with a = scale / sqrt(var + eps),
so the layer trains instead of staying frozen in the backbone (the automatic cut once moved
after the BatchNorm, with a notice). Folded only where that is exact: the node's four
parameters are stored, one value per output feature, finite, var + epsilon > 0, and no
training outputs (running mean, running var) are read. A model exported in training mode is
refused at load (onnx_source.py).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

EPSILON = 1e-5  # ONNX's default


def fold_batchnorm(consts: dict[str, np.ndarray], node: onnx.NodeProto, units: int,
                   w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(W', b') of dense layer (w (in, units), b (units,)) followed by `node`, when `node` is a
    BatchNormalization that folds exactly (module docstring); else None."""
    if node.op_type != "BatchNormalization" or len(node.input) != 5 or any(o for o in node.output[1:]):
        return None
    params = [consts.get(name) for name in node.input[1:]]
    if any(p is None or np.shape(p) != (units,) for p in params):
        return None
    eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), EPSILON)
    scale, shift, mean, var = (np.asarray(p, np.float64) for p in params)
    var = var + np.float64(np.float32(eps))
    if not (np.all(var > 0) and np.isfinite(np.stack([scale, shift, mean, var])).all()):
        return None  # a broken file's statistics: NaN weights would train; the source's own ops stay frozen
    a = scale / np.sqrt(var)
    return (w * a).astype(np.float32), ((b - mean) * a + shift).astype(np.float32)
