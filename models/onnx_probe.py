"""Running a user's graph, or a part of it, in ONNX Runtime while importing it: the whole-model
check (onnx_check.py), the softmax probe (onnx_head.py), the backbone's batch check
(onnx_batch.py) and the GELU probe (onnx_activation.py) each built the same session, and two
of them the same copy of the source with other outputs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper


def quiet_session(model: onnx.ModelProto):
    """A CPU session of `model` that logs errors only: ORT's warnings about the source's graph
    are not the user's to act on. ORT raises its own types when it refuses the model."""
    import onnxruntime as ort  # the build's environment has it; devices only ever run the backbone

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_to(model: onnx.ModelProto, feeds: dict[str, np.ndarray], tensors: list[str]) -> list[np.ndarray]:
    """The values of `tensors` (float tensors of the graph, any of them) when `model` runs on
    `feeds`: a copy of the model whose outputs are those tensors. Raises what ORT raises."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors)
    return quiet_session(probe).run(tensors, feeds)
