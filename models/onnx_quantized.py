"""Quantized source graphs (onnxruntime.quantization and other tools).

A weight stored quantized, DequantizeLinear(q, scale, zero_point) of stored tensors, is a
constant: its float values are (q - zero_point) * scale, computed here as ONNX Runtime does
(the integer difference, as float32, times the float32 scale, per tensor or per axis). So a
weight given that way counts as stored (onnx_source.stored_tensors); it was a "computed" weight.

What a float32 tail cannot take is quantized arithmetic between its layers: quantize_static's
QDQ format rounds each layer's output to 8 bits (a QuantizeLinear then DequantizeLinear pair),
quantize_dynamic computes the layer in integers (DynamicQuantizeLinear, MatMulInteger), and
the QOperator format in QLinearMatMul, QGemm, ... A float tail trained in
their place would not compute the source's outputs, so no automatic cut passes them; the
refusal says the model is quantized and what to do (quantized_hint). Quantized ops before the
cut are the frozen backbone's, which ONNX Runtime runs as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INTEGER_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16, TensorProto.INT32)
QUANTIZED_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                 "QLinearMatMul", "QLinearConv", "QGemm", "MatMulNBits", "DynamicQuantizeMatMul", "QAttention")


def dequantized(node: onnx.NodeProto, stored: dict[str, TensorProto]) -> np.ndarray | None:
    """The float32 values of DequantizeLinear `node` when its inputs are stored integers and a
    float32 scale (per tensor, or one per slice of `axis`); None for any other form (float8,
    blocked scales, a float16 scale), which then stays a computed tensor."""
    if node.op_type != "DequantizeLinear" or len(node.input) < 2 or any(n and n not in stored for n in node.input):
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    q_proto, scale_proto = stored[node.input[0]], stored[node.input[1]]
    zero_type = stored[node.input[2]].data_type if len(node.input) > 2 and node.input[2] else q_proto.data_type
    if q_proto.data_type not in INTEGER_TYPES or scale_proto.data_type != TensorProto.FLOAT or attrs.get("block_size") \
            or zero_type != q_proto.data_type:  # ONNX Runtime refuses a zero point of another type than the values
        return None
    q, scale = numpy_helper.to_array(q_proto).astype(np.int64), numpy_helper.to_array(scale_proto)
    zero = numpy_helper.to_array(stored[node.input[2]]).astype(np.int64) if len(node.input) > 2 and node.input[2] \
        else np.zeros_like(scale, np.int64)
    if scale.ndim > 1 or zero.size != scale.size:
        return None
    if scale.size == 1:  # per tensor (a scalar, or ONNX Runtime's shape [1])
        scale, zero = scale.reshape(()), zero.reshape(())
    else:  # per axis: one scale per slice along `axis`
        axis = attrs.get("axis", 1)
        axis = axis + q.ndim if axis < 0 else axis
        if not 0 <= axis < q.ndim or q.shape[axis] != scale.size:
            return None
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero).astype(np.float32) * scale.astype(np.float32)


def quantized_hint(model: onnx.ModelProto) -> str:
    """For a refused source with quantized ops: that it is quantized, and what imports (module doc)."""
    found = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS
             and not (n.op_type == "DequantizeLinear" and n.input and n.input[0] in {t.name for t in
                                                                                      model.graph.initializer})]
    if not found:
        return ""
    shown = ", ".join(dict.fromkeys(f"{n.op_type} node {n.name or n.output[0]!r}" for n in found[:3]))
    return (f"; the model is quantized ({shown}, ...): the layers of a trainable tail must compute in float32, and a "
            "float tail in place of quantized ones (8-bit outputs between layers, integer matmuls) would not give "
            "the source's outputs; import the float model from before quantization, or quantize it with the dense "
            "tail left float (onnxruntime.quantization's nodes_to_exclude): quantized ops before the tail run in "
            "the frozen backbone")
