"""A dense layer written on the transposed input: y = (W @ x^T + b)^T, which is x @ W^T + b^T.

torch code that keeps a weight as (out, in) and multiplies from the left, `(self.w @ x.T).T + b`
or `(self.w @ x.T + self.b).T` with b of shape (out, 1), exports as

    x -> Transpose -> MatMul(W, x^T) -> [Add b (out, 1)] -> Transpose -> [Add b (out,)] -> ...

Read as a dense layer it is weight W^T (in, out) and bias b. The importer looked only for
MatMul(x, W): the first form was refused ("no dense tail", naming the Transpose as a computed
weight), and in the second the layer stayed frozen in the backbone with no notice at all (the
notice names dense layers, and this MatMul's stored operand is its first). A bias added before
the outer Transpose must be one per output, (out, 1) or one number: a (out,) one is added per
example there (broadcast over the batch axis), which is no bias; such a layer is not read here.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .onnx_source import Unreadable, node_label


def swaps_two_axes(node: onnx.NodeProto) -> bool:
    """A Transpose of a matrix: perm [1, 0] (or no perm, which reverses the axes)."""
    perm = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), [1, 0])
    return node.op_type == "Transpose" and perm == [1, 0]


def left_matmul(g, node: onnx.NodeProto) -> bool:
    """`node` is MatMul(W stored matrix, computed operand): the MatMul of the pattern above.
    g: onnx_import._Graph."""
    return node.op_type == "MatMul" and len(node.input) == 2 and node.input[0] in g.consts \
        and node.input[1] not in g.consts and np.ndim(g.consts[node.input[0]]) == 2


def transposed_layer(g, x: str, node: onnx.NodeProto) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray, str] | \
        Unreadable | None:
    """(the MatMul, W (in, out), b (out,), the tensor after the outer Transpose) when `node`, the
    one reader of x (N, in), starts the pattern of the module docstring; Unreadable (the MatMul,
    why) when it starts MatMul(W, x^T) but the rest is not the pattern; None otherwise.
    g: onnx_import._Graph (consts, consumers, ranks)."""
    if not (swaps_two_axes(node) and node.input[0] == x and g.ranks.get(x, 2) == 2):
        return None
    users = g.consumers.get(node.output[0], [])
    if len(users) != 1 or not left_matmul(g, users[0]) or users[0].input[1] != node.output[0]:
        return None
    matmul = users[0]
    w = np.asarray(g.consts[matmul.input[0]], np.float32).T  # W (out, in) -> (in, out)
    b, tensor = np.zeros(w.shape[1], np.float32), matmul.output[0]
    users = g.consumers.get(tensor, [])
    if len(users) == 1 and users[0].op_type == "Add" and tensor not in g.outputs:
        other = [n for n in users[0].input if n != tensor]
        value = g.consts.get(other[0]) if len(other) == 1 else None
        if value is None:
            return Unreadable(matmul, f"the Add after W @ x^T adds {other[-1]!r}, which is computed, not a stored bias")
        if not (np.size(value) == 1 or np.shape(value) == (w.shape[1], 1)):  # module docstring
            return Unreadable(matmul, f"its bias {other[0]!r} of shape {np.shape(value)} is added to W @ x^T, which "
                              f"is (outputs, batch), so it is added per example, not per output: store it as "
                              f"({w.shape[1]}, 1), or add it after the outer Transpose")
        b, tensor = np.broadcast_to(np.asarray(value, np.float32).reshape(-1), w.shape[1:]).copy(), users[0].output[0]
        users = g.consumers.get(tensor, [])
    if len(users) != 1 or not swaps_two_axes(users[0]) or tensor in g.outputs:
        return Unreadable(matmul, f"{_not_transposed(g, tensor, users, tensor != matmul.output[0])}: the tail reads "
                          "(W @ x^T + b)^T, which is x @ W^T + b^T")
    return matmul, w, b, users[0].output[0]


def _not_transposed(g, tensor: str, users: list[onnx.NodeProto], biased: bool) -> str:
    """Why `tensor`, W @ x^T (+ b), is not turned into (batch, outputs) by the one Transpose the
    pattern ends in. "No Transpose after it" was said of every case, also where one follows."""
    what = "W @ x^T + b" if biased else "W @ x^T"
    labels = list(dict.fromkeys(node_label(n) for n in users))
    if len(users) > 1:  # Add(m, m) reads it twice: two readers, one node
        return f"{what} (outputs, batch) has {len(users)} readers ({', '.join(labels)}), not one Transpose"
    if users and tensor in g.outputs:
        return f"{what} (outputs, batch) is also a graph output, not only read by the Transpose after it"
    if users:
        return f"{what} (outputs, batch) is read by {labels[0]}, not by the Transpose that turns it into " \
               "(batch, outputs)"
    return f"{what} gives (outputs, batch), and no Transpose after it turns that into (batch, outputs)"
