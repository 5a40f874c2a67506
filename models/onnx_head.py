"""What follows a kept classifier: its Softmax must be the one fedge's head computes.

fedge keeps the source's classifier as a head whose probabilities are one softmax over all of
its C outputs, and drops the source's post-processing (onnx_import.POST_PROCESSING). That is
only the same model when each Softmax or LogSoftmax there normalizes a (N, C) tensor over its
last axis. A probe's model reshaped 10 logits to (N, 2, 5) and took two 5-way softmaxes; another
normalized over the batch axis: both imported as 10-class heads whose probabilities the source
never gave. Such a head is refused by name; a new head (--classes K) drops the source's anyway.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .onnx_source import OnnxImportError

NORMALIZERS = ("Softmax", "LogSoftmax")


def _axis(node: onnx.NodeProto, opset: int) -> int:
    default = -1 if opset >= 13 else 1  # before opset 13 Softmax flattened from `axis` on (1: the classes)
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), default)


def check_normalizers(model: onnx.ModelProto, downstream, logits: str, classifier: str, classes: int,
                      where: str) -> None:
    """OnnxImportError unless every Softmax/LogSoftmax computed from `logits` (the classifier's
    (N, classes) output) normalizes a (N, classes) tensor over its last axis.
    downstream: _Graph.downstream, the nodes computed from a tensor."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.value_info, *inferred.input, *inferred.output)
              if v.type.tensor_type.HasField("shape")}
    shapes[logits] = [None, classes]  # the classifier's own output is (N, classes) by construction
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    for node in downstream(logits):
        if node.op_type not in NORMALIZERS:
            continue
        shape = shapes.get(node.input[0])
        if shape is None:
            continue  # shape inference could not follow it: nothing to say it differs
        axis = _axis(node, opset)
        last = axis in (-1, len(shape) - 1)
        if len(shape) == 2 and last and shape[1] in (None, classes):
            continue
        raise OnnxImportError(
            f"{where}: {node.op_type} node {node.name or node.output[0]!r} normalizes axis {axis} of a tensor of "
            f"shape {['N' if d is None else d for d in shape]} computed from classifier {classifier!r} ({classes} "
            f"outputs); fedge's head is one softmax over all {classes}, so kept as is it would not give the "
            "source's probabilities: give --classes K for a new head")
