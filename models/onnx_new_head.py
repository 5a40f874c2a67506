"""A new head straight on a cut with no dense tail after it: the source as a frozen feature
extractor.

Some classifiers are not dense layers: a CNN that ends in global pooling and a 1x1 Conv, a
token classifier applied per position. With `--classes K` and `--cut NAME` the user says what
to keep (the graph up to NAME, flattened to z by the backbone) and what to replace (everything
after it), so the tail is empty and only the new head trains. The features are the cut's
per-example size, from shape inference with the input's per-example dims fixed.
"""

from __future__ import annotations

import math

import onnx

from .onnx_source import OnnxImportError


def cut_features(model: onnx.ModelProto, input_name: str, input_shape: tuple[int, ...], cut: str,
                 where: str) -> int:
    """Values per example at `cut` (what the backbone flattens to z)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for value in probe.graph.input:  # the per-example dims the spec fixes, so inference can follow them
        if value.name == input_name:
            for d, size in zip(value.type.tensor_type.shape.dim[1:], input_shape):
                d.Clear()
                d.dim_value = size
    del probe.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(probe).graph
    found = next((v for v in (*inferred.value_info, *inferred.output, *inferred.input) if v.name == cut), None)
    dims = found.type.tensor_type.shape.dim if found is not None and found.type.tensor_type.HasField("shape") else None
    per_example = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in (dims or [])[1:]]
    if dims is None or len(dims) < 2 or None in per_example:
        shown = "unknown" if dims is None else f"(batch, {', '.join(str(d or '?') for d in per_example)})"
        raise OnnxImportError(f"{where}: the cut {cut!r} has per-example shape {shown}; a new head needs a fixed "
                              "number of features there: cut where shape inference knows every dim after the batch")
    return math.prod(per_example)
