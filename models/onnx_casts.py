"""Casts between dense layers of the tail that leave the values as they were, so the tail
passes over them as it does an Identity (onnx_import._Graph.follow).

- A Cast of float32 values to float32 (Keras and hand-written graphs, skl2onnx on the input)
  changes nothing: it froze the layer before it, as an op the tail cannot train through.
- A Cast of float32 values to double, read only by a Cast back to float32: torch's
  `h.double().float()` between layers. Every float32 is a double exactly, and the cast back
  rounds it to itself, so the pair is the identity. It froze the Linear before it in the
  backbone (the cut moved after the Casts, with a notice). A round trip through float16 or
  bfloat16 rounds, and still ends the tail.

A Cast is only known exact where its input's type is known, and ONNX's shape inference stops at
ai.onnx.ml ops: in skl2onnx's Scaler -> PCA (MatMul) -> Cast to float -> MLPClassifier, the
PCA's output had no type, its Cast ended the tail, and the PCA stayed frozen with a notice
blaming the Cast (a Scaler -> PCA -> LogisticRegression, with no Cast, trained its PCA).
with_dense_float_types gives such outputs the type ONNX fixes for them.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

WIDENS_FLOAT32 = (TensorProto.FLOAT, TensorProto.DOUBLE)  # types that hold every float32 exactly


def _cast_to(node: onnx.NodeProto) -> int | None:
    if node.op_type != "Cast":
        return None
    return next((a.i for a in node.attribute if a.name == "to"), None)


def after_exact_casts(types: dict[str, int], consumers: dict[str, list[onnx.NodeProto]],
                      tensor: str, node: onnx.NodeProto) -> str | None:
    """The tensor after `node` (the one reader of float32 `tensor`) and, for a widening Cast,
    the one Cast back to float32 that reads it, when together they are the identity (module
    docstring); None otherwise. types, consumers: _Graph's (element type and readers by name)."""
    to = _cast_to(node)
    if types.get(tensor) != TensorProto.FLOAT or to not in WIDENS_FLOAT32:
        return None
    if to == TensorProto.FLOAT:
        return node.output[0]
    back = consumers.get(node.output[0], [])
    if len(back) == 1 and _cast_to(back[0]) == TensorProto.FLOAT:
        return back[0].output[0]
    return None


SAME_TYPE_OPS = ("MatMul", "Gemm", "Add", "Sub", "Mul", "Div")  # inputs and output of one type T in ONNX


def with_dense_float_types(types: dict[str, int], nodes, stored: dict) -> dict[str, int]:
    """`types` (element type by tensor name, from shape inference) with float32 added for the
    outputs of SAME_TYPE_OPS nodes that have a stored float32 operand and no inferred type
    (module docstring). nodes: the graph's, in order; stored: the stored values by name."""
    types = dict(types)
    for node in nodes:
        if node.op_type in SAME_TYPE_OPS and node.domain in ("", "ai.onnx") and node.output[0] not in types and any(
                getattr(stored.get(i), "dtype", None) == np.float32 for i in node.input):
            types[node.output[0]] = TensorProto.FLOAT
    return types
