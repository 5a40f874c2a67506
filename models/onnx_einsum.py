"""A dense layer written as an Einsum: torch's `torch.einsum("bi,oi->bo", x, W)` (W kept (out, in),
as nn.Linear keeps it), `"bi,io->bo"`, or W first (`"oi,bi->bo"`) exports as one Einsum node of x
and the stored W. It is
x @ W^T (or x @ W): one dense layer, whose bias, if any, is the Add after it. It stayed frozen
in the backbone, and no notice said so (the notice looked for Gemm and MatMul only).

Only the plain two-operand form is read: x's two labels (batch, in), a matrix over {in, out},
the output (batch, out), each label once per operand. Anything else (ellipses, a sum over the
batch, a trace) is not read by the tail and stays in the backbone; onnx_dense.py still counts a
projection of x by one stored tensor as a dense layer, so the frozen-layer notice names it and a
refusal gives its equation and the forms the tail reads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .onnx_source import Unreadable

READ = ("'bi,oi->bo' (W (out, in), as nn.Linear keeps it), 'bi,io->bo' or 'oi,bi->bo': x (batch, in), a matrix W, "
        "the output (batch, out) written out; rewrite it as a MatMul (torch: nn.Linear, or x @ W.T) or with the "
        "explicit equation 'bi,oi->bo'")


def einsum_equation(node: onnx.NodeProto) -> str:
    """An Einsum node's equation, without spaces ("" when it has none)."""
    value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "equation"), b"")
    return (value.decode() if isinstance(value, bytes) else str(value)).replace(" ", "")


def einsum_weight(g, node: onnx.NodeProto, x: str) -> np.ndarray | str | None:
    """W (in, out) when `node` is Einsum of x and a stored matrix, in either order, of the module
    docstring's form; why not, when it is an Einsum of x and one stored tensor of another form (a
    dense layer or not: onnx_dense.py tells); else None. g: onnx_import._Graph."""
    if node.op_type != "Einsum" or len(node.input) != 2 or sum(i in g.consts for i in node.input) != 1:
        return None
    stored = 0 if node.input[0] in g.consts else 1
    if node.input[1 - stored] != x:
        return None
    w = np.asarray(g.consts[node.input[stored]], np.float32)
    if w.ndim != 2:
        return f"weight has shape {w.shape}; dense layers need a matrix"
    equation = einsum_equation(node)
    lhs, _, out = equation.partition("->")
    operands = lhs.split(",")
    if len(operands) == 2 and all(len(t) == 2 and t.isalpha() and len(set(t)) == 2 for t in (*operands, out)):
        (batch, inner), w_labels = operands[1 - stored], operands[stored]
        if out[0] == batch and out[1] not in (batch, inner) and set(w_labels) == {inner, out[1]}:
            return w if w_labels == inner + out[1] else w.T
    if len(operands) == 2 and operands[1 - stored].isalpha() and len(operands[1 - stored]) > 2:  # 'bsi,io->bso'
        return (f"its equation {equation!r} reads x as {len(operands[1 - stored])}-D; the tail's layers take x "
                "(batch, features): cut after the Flatten or global pooling")
    return f"its equation {equation!r} is not one the tail reads: {READ}"


def einsum_layer(g, x: str, node: onnx.NodeProto) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray, str] | \
        Unreadable | None:
    """(the node, W (in, out), a zero bias, its output) when `node` reads x as an Einsum dense
    layer; Unreadable (the node, why) when it is an Einsum of x and a stored tensor of another
    form; else None (the same shape as onnx_transposed.transposed_layer's answer)."""
    w = einsum_weight(g, node, x)
    if w is None or isinstance(w, str):
        return w if w is None else Unreadable(node, w)
    return node, w, np.zeros(w.shape[1], np.float32), node.output[0]
