"""What the importer says about a cut it cannot use (onnx_import.py): a cut that is no float
tensor, and a graph with no dense tail to train. Both name the node and why; found by importing
the 1,434 models of the onnx wheel's backend test data (benchmarks/results/2026-12-06-onnx-corpus)."""

from __future__ import annotations

import onnx
from onnx import TensorProto

from .onnx_dense import DENSE_OPS, dense_operands
from .onnx_linear import ml_models, sklearn_hint
from .onnx_quantized import quantized_hint
from .onnx_source import OnnxImportError, node_label


def _writer(model: onnx.ModelProto, tensor: str) -> str:
    node = next((n for n in model.graph.node if tensor in n.output), None)
    return "the input" if node is None else node_label(node)


def check_cut_type(g, cut: str) -> None:
    """OnnxImportError when the cut is known to hold no float32 values: the backbone's output z
    feeds the tail as float32, and an ArgMax's int64 cut once failed in ONNX Runtime's load of the
    backbone ("Type Error: Type (tensor(float)) of output arg (z) of node (fedge_cut) ..."), naming
    neither the cut nor the node."""
    elem = g.types.get(cut, TensorProto.FLOAT)
    if elem not in (TensorProto.FLOAT, TensorProto.UNDEFINED):
        raise OnnxImportError(f"{g.where}: the cut {cut!r} holds {TensorProto.DataType.Name(elem)} values (written "
                              f"by {_writer(g.model, cut)}); the trainable part takes float32 features: cut at a "
                              "float tensor before it (the layers after that cut train only in float32: where they "
                              "compute in another type, add --classes K for a new head on that tensor)")


def no_tail_error(g, last_error: OnnxImportError | None) -> OnnxImportError:
    """find_cut's refusal: the nearest dense layer's own refusal, or else the dense op whose
    weight is computed (the onnx wheel's 'light' ResNet, VGG, AlexNet ... build every weight
    with ConstantOfShape, and were told only which op types the graph holds), or else the ops."""
    model, where = g.model, g.where
    if last_error is not None:  # it says where it is itself; once said twice
        why = ": " + str(last_error).removeprefix(f"{where}: ")
    else:
        computed = [n for n in model.graph.node if n.op_type in DENSE_OPS and len(n.input) > 1
                    and dense_operands(n, g.consts, g.producer) is None]  # W @ x^T's x^T is no computed weight
        ops = sorted({n.op_type for n in model.graph.node})
        why = f"; the graph holds {', '.join(ops[:12])}{ml_models(model.graph)}"
        if computed:
            node = computed[-1]
            why = (f"; the last, {node_label(node)}, multiplies by "
                   f"{node.input[1]!r}, computed by {_writer(model, node.input[1])}, not stored (an initializer "
                   "or Constant): only stored weights train" + why)
    return OnnxImportError(f"{where}: found no dense tail to train (no Gemm/MatMul with stored weights leads to "
                           f"the output){why}{sklearn_hint(model)}{quantized_hint(model)}; for a new head alone on "
                           "the features at a tensor NAME (e.g. the global pooling's output), give --cut NAME with "
                           "--classes K")
