"""Which nodes are dense layers with a stored weight: the one answer that the importer's cut search
and tail reader (onnx_import.py), its refusal when no tail is found (onnx_cut.py) and the
frozen-layer notice (onnx_notice.py) share. Each had its own copy of the test, and they drifted:
a fix to one (Einsum projections, W @ x^T) had to be repeated in the others, and where it was not,
a stored W of W @ x^T was called a computed weight, and an Einsum projection's model was refused
without the reason a MatMul projection's got.

A weight is stored when onnx_source.stored_tensors holds it: an initializer or Constant, or an
Identity, Transpose, Cast to float32 or DequantizeLinear of one, unwrapped there. The layers:

- Gemm(x, W, ...) (or ONNX Runtime's FusedGemm: onnx_gemm.py) and MatMul(x, W): W is the second
  input, of any rank (MatMul(x (b, s, i), W) is a transformer's projection);
- MatMul(W, Transpose(x)) with W a matrix: the (W @ x^T [+ b]).T of onnx_transposed.py;
- Einsum of x and one stored tensor of 2 dims or more that sums exactly one of its labels away:
  'bi,oi->bo' (onnx_einsum.py) or a projection 'bsi,io->bso'. 'bi,i->bi' scales features: no
  layer (the notice once named it a frozen dense layer).

Which of them the trainable tail can read is the reader's answer (onnx_import._dense, with the
reason where it cannot): the others stay in the frozen backbone, and the notice names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
import onnx

from .onnx_einsum import einsum_equation
from .onnx_gemm import is_gemm
from .onnx_transposed import swaps_two_axes

DENSE_OPS = ("Gemm", "MatMul")


class DenseOperands(NamedTuple):
    x: str  # the tensor the layer reads
    weight: str  # the node's input that holds the stored weight
    start: onnx.NodeProto  # the layer's first node: the node, or the Transpose of MatMul(W, Transpose(x))


def dense_operands(node: onnx.NodeProto, consts: Mapping[str, np.ndarray],
                   producer: Mapping[str, onnx.NodeProto]) -> DenseOperands | None:
    """x, W and the first node when `node` is a dense layer with a stored weight (module docstring),
    else None. consts: the stored values by name (onnx_source.stored_tensors, as arrays);
    producer: the node that writes each tensor."""
    if node.op_type == "Einsum":
        return _projection(node, consts)
    if node.op_type not in DENSE_OPS and not is_gemm(node) or len(node.input) < 2:
        return None
    first, second = node.input[0], node.input[1]
    if second in consts:
        return DenseOperands(first, second, node)
    writer = producer.get(second)
    if node.op_type == "MatMul" and first in consts and np.ndim(consts[first]) == 2 and writer is not None \
            and swaps_two_axes(writer):
        return DenseOperands(writer.input[0], first, writer)
    return None


def _projection(node: onnx.NodeProto, consts: Mapping[str, np.ndarray]) -> DenseOperands | None:
    """An Einsum of x and one stored tensor of 2 dims or more, summing exactly one of its labels
    away; None for anything else (the stored tensor's dims are read from the equation)."""
    if len(node.input) != 2 or sum(i in consts for i in node.input) != 1:
        return None
    lhs, arrow, out = einsum_equation(node).replace("...", "").partition("->")
    operands = lhs.split(",")
    if len(operands) != 2:
        return None
    if not arrow:  # implicit output: the labels that appear once, in alphabetical order
        out = "".join(sorted(c for c in set(lhs) - {","} if lhs.count(c) == 1))
    stored = 0 if node.input[0] in consts else 1
    if len(operands[stored]) < 2 or sum(c not in out for c in set(operands[stored])) != 1:
        return None
    return DenseOperands(node.input[1 - stored], node.input[stored], node)
