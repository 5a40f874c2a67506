"""Refuse an imported model whose frozen backbone stores NaN or Inf weights.

The trainable tail's NaN and Inf weights are refused where the layers are read
(onnx_import.DenseLayer), but the backbone (the source graph up to the cut) was taken as is: a
Conv with one NaN in its kernel gave NaN features for every input, the whole-model check skips
a source that gives non-finite values, and every device would have trained on NaN.

    NaN           refused in any stored value the cut is computed from
    +Inf, -Inf    refused where a weight-like op reads it (WEIGHT_OPS), or an Add or Sub adds it
                  to what a dense op computes with a stored weight (a bias: a MatMul + Add layer
                  whose bias held Inf was refused as a tail layer, so the automatic cut moved
                  past it, and it imported as part of the backbone); elsewhere it may be a mask
                  (attention's Where(mask, -inf, scores), Add(scores, mask)) or a Clip bound,
                  which exporters write on purpose

Float attributes are weights too (Gemm's alpha and beta, LeakyRelu's slope): NaN refused in any,
Inf in those of WEIGHT_OPS and SLOPE_OPS (a Gemm refused as a tail layer for its alpha = Inf once
imported as part of the backbone).

The values looked at are the stored inputs (onnx_source.stored_tensors: initializers, Constant
values, a stored matrix's Transpose) of the nodes the cut depends on, and the same within the
subgraphs of those nodes (If, Loop, Scan), by the same rules: a subgraph's own initializers and
Constants, and the outer tensors it reads by name (onnx_scope.py), which once went unchecked.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_scope import node_reads
from .onnx_source import OnnxImportError, node_label, stored_tensors, subgraphs

WEIGHT_OPS = ("Conv", "ConvTranspose", "ConvInteger", "Gemm", "MatMul", "Einsum", "BatchNormalization",
              "LayerNormalization", "InstanceNormalization", "GroupNormalization", "PRelu", "Mul",
              "DequantizeLinear", "QLinearConv", "QLinearMatMul")
BIAS_OPS = ("Add", "Sub")  # a bias, where the other operand is a DENSE_OPS output with a stored weight
DENSE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum")
SLOPE_OPS = ("LeakyRelu", "Elu", "Selu", "Celu", "HardSigmoid")  # an Inf float attribute scales their values

Scope = dict[str, "onnx.TensorProto | None"]  # name -> its stored value, None where computed



def _counts(tensor: onnx.TensorProto) -> tuple[int, int]:
    """(NaN values, Inf values) of a stored float tensor; (0, 0) for any other type."""
    try:
        value = numpy_helper.to_array(tensor)
    except Exception:  # noqa: BLE001 - a type numpy cannot hold (bfloat16 on an old numpy): nothing to judge
        return 0, 0
    if value.dtype.kind not in "fc":
        return 0, 0
    return int(np.isnan(value).sum()), int(np.isinf(value).sum())


def _ancestors(graph: onnx.GraphProto, cut: str) -> list[onnx.NodeProto]:
    """The nodes `cut` is computed from, in graph order (through what subgraphs read, too)."""
    producer = {o: n for n in graph.node for o in n.output}
    seen, todo = set(), [cut]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            todo.extend(node_reads(node))
    return [n for n in graph.node if id(n) in seen]


def _inner_scope(graph: onnx.GraphProto, outer: Scope) -> Scope:
    """What a subgraph sees: the outer scope, less the names it defines itself, plus its own stored values."""
    scope = dict(outer)
    scope.update({v.name: None for v in graph.input})
    scope.update({o: None for n in graph.node for o in n.output})
    scope.update(stored_tensors(graph))
    return scope


def _reads_a_weight(node: onnx.NodeProto, name: str, producer: dict, scope: Scope) -> bool:
    if node.op_type in WEIGHT_OPS:
        return True
    dense = [producer.get(o) for o in node.input if o != name] if node.op_type in BIAS_OPS else []
    return any(p is not None and p.op_type in DENSE_OPS and any(scope.get(i) is not None for i in p.input)
               for p in dense)


def _check_attributes(node: onnx.NodeProto, where: str, cut: str, place: str) -> None:
    """A float attribute is a weight too: Gemm's alpha and beta, LeakyRelu's slope, an epsilon."""
    for attr in node.attribute:
        values = np.asarray([attr.f] if attr.type == onnx.AttributeProto.FLOAT else
                            attr.floats if attr.type == onnx.AttributeProto.FLOATS else [], np.float64)
        if np.isnan(values).any() or np.isinf(values).any() and node.op_type in (*WEIGHT_OPS, *SLOPE_OPS):
            raise OnnxImportError(f"{where}: attribute {attr.name} of {node_label(node)}{place} in the frozen backbone "
                                  f"(before the cut {cut!r}) is {'NaN' if np.isnan(values).any() else 'Inf'}: it "
                                  "would give non-finite features for every input; fix the model")


def _check(nodes, producer: dict, scope: Scope, where: str, cut: str, place: str = "") -> None:
    for node in nodes:
        _check_attributes(node, where, cut, place)
        for name in node.input:
            if scope.get(name) is None:
                continue
            nan, inf = _counts(scope[name])
            if nan or inf and _reads_a_weight(node, name, producer, scope):
                what = f"{nan} NaN" if nan else f"{inf} Inf"
                raise OnnxImportError(f"{where}: stored tensor {name!r}, read by {node_label(node)}{place} in the "
                                      f"frozen backbone (before the cut {cut!r}), holds {what} value(s): it would give "
                                      "non-finite features for every input; fix the model's weights")
        for sub in subgraphs(node):
            _check(sub.node, {**producer, **{o: n for n in sub.node for o in n.output}}, _inner_scope(sub, scope),
                   where, cut, f" in a subgraph of {node_label(node)}{place}")


def check_backbone_finite(model: onnx.ModelProto, cut: str, where: str) -> None:
    """OnnxImportError naming the first stored value of the frozen backbone (the graph up to
    `cut`) that holds NaN, or Inf where it is a weight (module docstring), and the node that
    reads it, in a subgraph too."""
    graph = model.graph
    _check(_ancestors(graph, cut), {o: n for n in graph.node for o in n.output}, dict(stored_tensors(graph)),
           where, cut)
