"""A dense layer written as an Einsum: torch's `torch.einsum("bi,oi->bo", x, W)` (W kept (out, in),
as nn.Linear keeps it), `"bi,io->bo"`, or W first (`"oi,bi->bo"`) exports as one Einsum node of x
and the stored W. It is
x @ W^T (or x @ W): one dense layer, whose bias, if any, is the Add after it. It stayed frozen
in the backbone, and no notice said so (the notice looked for Gemm and MatMul only).

Only the plain two-operand form is read: x's two labels (batch, in), a matrix over {in, out},
the output (batch, out), each label once per operand. Anything else (ellipses, a sum over the
batch, a trace) is no dense layer and stays in the backbone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def _equation(node: onnx.NodeProto) -> str:
    value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "equation"), b"")
    return (value.decode() if isinstance(value, bytes) else str(value)).replace(" ", "")


def einsum_weight(g, node: onnx.NodeProto, x: str | None = None) -> np.ndarray | None:
    """W (in, out) when `node` is Einsum of x and a stored matrix, in either order, of the module
    docstring's form, else None. x None: whichever operand is not stored. g: onnx_import._Graph."""
    if node.op_type != "Einsum" or len(node.input) != 2 or sum(i in g.consts for i in node.input) != 1:
        return None
    stored = 0 if node.input[0] in g.consts else 1
    if x is not None and node.input[1 - stored] != x:
        return None
    lhs, _, out = _equation(node).partition("->")
    operands = lhs.split(",")
    if len(operands) != 2 or not all(len(t) == 2 and t.isalpha() and len(set(t)) == 2 for t in (*operands, out)):
        return None
    (batch, inner), w_labels = operands[1 - stored], operands[stored]
    w = np.asarray(g.consts[node.input[stored]], np.float32)
    if w.ndim != 2 or out[0] != batch or out[1] in (batch, inner) or set(w_labels) != {inner, out[1]}:
        return None
    return w if w_labels == inner + out[1] else w.T


def einsum_layer(g, x: str, node: onnx.NodeProto) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray, str] | None:
    """(the node, W (in, out), a zero bias, its output) when `node` reads x as an Einsum dense
    layer, else None (the same shape as onnx_transposed.transposed_layer's answer)."""
    w = einsum_weight(g, node, x)
    if w is None:
        return None
    return node, w, np.zeros(w.shape[1], np.float32), node.output[0]
