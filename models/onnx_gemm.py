"""A Gemm read as a dense layer: W (in, out) and b (out,) with transB, alpha and beta folded in;
and ONNX Runtime's FusedGemm (com.microsoft), Gemm and its activation in one node.

ONNX Runtime's optimizer (SessionOptions.optimized_model_filepath, at ORT_ENABLE_EXTENDED or
above) fuses each Gemm -> Relu into one FusedGemm(activation="Relu"), and a model saved that way
is what some users bring. The importer knew no FusedGemm: each such layer stayed frozen in the
backbone with no notice (the notice names dense layers, and it was none), so a probe's torch
Linear -> ReLU -> Linear -> GELU -> Linear trained one hidden layer of its two, and a CNN's
Linear -> ReLU -> Linear none. A FusedGemm whose activation the tail trains (onnx_activation.py:
Relu, Tanh, Sigmoid, LeakyRelu with its activation_alpha) is read as that Gemm and that
activation; another activation (HardSigmoid, ...) is refused as a layer, by name, so the layer
stays frozen with a notice that says why. A BatchNormalization or temperature after a FusedGemm
comes after its activation, so it is never folded into its weights (onnx_import._dense). A
one-output FusedGemm with a Sigmoid is a binary classifier's p = sigmoid(z), read as the
two-class head [0, z] as an unfused Gemm -> Sigmoid is (it was refused as a classifier of one
value with no Sigmoid after it).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .onnx_activation import TRAINABLE, Activation, one_node_activation
from .onnx_source import OnnxImportError, node_label

FUSED_GEMM = ("com.microsoft", "FusedGemm")


def is_gemm(node: onnx.NodeProto) -> bool:
    """A Gemm, or ONNX Runtime's FusedGemm (module docstring)."""
    return node.op_type == "Gemm" or (node.domain, node.op_type) == FUSED_GEMM


def per_output_bias(where: str, node: onnx.NodeProto, value: np.ndarray, units: int) -> np.ndarray:
    """A stored bias as (units,). ONNX broadcasts as numpy does: (units,), (1, units) or one number
    (a scalar bias once moved the cut); Gemm's C of (units, 1) or (batch, units) was a ValueError."""
    try:
        return np.broadcast_to(value, (1, units)).reshape(-1)
    except ValueError:
        raise OnnxImportError(f"{where}: {node_label(node)}: bias of shape {value.shape} for {units} outputs; a "
                              "dense layer has one bias per output") from None


def gemm_weights(g, node: onnx.NodeProto, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W (in, out), b (out,)) of a Gemm or FusedGemm whose stored B is `w`, its transB, alpha, C
    and beta folded in. g: onnx_import._Graph."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transA", 0):
        raise OnnxImportError(f"{g.where}: {node_label(node)}: transA=1 (a transposed input) is not supported")
    w = (w.T if attrs.get("transB", 0) else w) * np.float32(attrs.get("alpha", 1.0))
    c = g.const(node.input[2], node, "bias") if len(node.input) > 2 and node.input[2] else np.zeros(1, np.float32)
    return w, per_output_bias(g.where, node, c * np.float32(attrs.get("beta", 1.0)), w.shape[1])


FUSED_ATTRIBUTE_TYPES = {"activation": onnx.AttributeProto.STRING, "activation_alpha": onnx.AttributeProto.FLOAT,
                         "activation_beta": onnx.AttributeProto.FLOAT, "activation_gamma": onnx.AttributeProto.FLOAT}


def refuse_malformed_fused(graph: onnx.GraphProto, where: str) -> None:
    """OnnxImportError naming a FusedGemm whose activation attributes are not of the types ONNX
    Runtime writes (no schema checks com.microsoft's ops on load): activation_alpha "abc" or a list
    was a raw ValueError from the cut search, and ONNX Runtime refuses such a model as invalid."""
    for node in (n for n in graph.node if (n.domain, n.op_type) == FUSED_GEMM):
        for attr in (a for a in node.attribute if a.name in FUSED_ATTRIBUTE_TYPES):
            if attr.type != FUSED_ATTRIBUTE_TYPES[attr.name]:
                want = onnx.AttributeProto.AttributeType.Name(FUSED_ATTRIBUTE_TYPES[attr.name])
                raise OnnxImportError(f"{where}: {node_label(node)}: its {attr.name} is "
                                      f"{onnx.AttributeProto.AttributeType.Name(attr.type)}, not one {want} as ONNX "
                                      "Runtime writes it; ONNX Runtime refuses the model: fix or re-export it")
            if attr.name == "activation" and not _utf8(attr.s):  # read as text by the cut search and the unfuse
                raise OnnxImportError(f"{where}: {node_label(node)}: its activation {attr.s[:40]!r} is not UTF-8 "
                                      "text, so no op name: fix or re-export the model")


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def fused_activation(where: str, node: onnx.NodeProto) -> Activation | None:
    """A FusedGemm's activation, as onnx_activation reads the same op written as its own node;
    None for a Gemm; OnnxImportError naming the node for one the tail cannot train."""
    if (node.domain, node.op_type) != FUSED_GEMM:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    kind = attrs.get("activation", b"").decode()  # UTF-8: refuse_malformed_fused ran at load
    if not kind:  # no activation fused: a Gemm
        return None
    alpha = {"alpha": attrs["activation_alpha"]} if "activation_alpha" in attrs else {}
    found = one_node_activation(helper.make_node(kind, ["x"], [node.output[0]], **alpha))
    if kind == "LeakyRelu" and found is None:  # its one refusal there: a slope the spec refuses (LayerSpec)
        raise OnnxImportError(f"{where}: {node_label(node)}: ONNX Runtime's fused Gemm with LeakyRelu of slope "
                              f"{alpha['alpha']:g}; the tail's leaky_relu takes a slope in [0, 1]")
    if found is None or found.name == "gelu":  # FusedGemm fuses no Gelu; an op by that name is no known one
        raise OnnxImportError(f"{where}: {node_label(node)}: ONNX Runtime's fused Gemm with activation {kind!r}; the "
                              f"tail trains {TRAINABLE} only: export the model without ONNX Runtime's "
                              "optimizations (the source file, not optimized_model_filepath's)")
    return found
