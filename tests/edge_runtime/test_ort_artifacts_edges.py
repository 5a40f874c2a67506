"""The ORT optimizer graphs are the same bytes from one build to the next (ort_artifacts.py):
onnxblock names values with a process-wide counter, which the build drops, so the manifest's
sha256 of optimizer_*.onnx does not change between two builds of one spec (a device would fetch
the model again for nothing). The mutation8-build audit found no test of it. Skipped where
onnxruntime's training build is not installed."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import BackendUnavailable
from fedge.edge_runtime.kernel.ort_loader import load_ort_training

pytestmark = pytest.mark.ort_training
pytest.importorskip("onnx")
try:
    onnxblock = load_ort_training("onnxblock")
except BackendUnavailable as exc:
    pytest.skip(f"onnxruntime training build not installed: {exc}", allow_module_level=True)

from onnx import numpy_helper  # noqa: E402

from fedge.models.ort_artifacts import _optimizer_model  # noqa: E402


@pytest.mark.parametrize("optimizer", ["SGD", "AdamW"])
def test_two_builds_of_an_optimizer_graph_are_the_same_bytes(optimizer):
    trainable = [numpy_helper.from_array(np.zeros((3, 2), np.float32), "w"),
                 numpy_helper.from_array(np.zeros(2, np.float32), "b")]
    first, second = (_optimizer_model(onnxblock, getattr(onnxblock.optim, optimizer)(), trainable)
                     for _ in range(2))  # the counter has moved on between the two
    assert first.SerializeToString() == second.SerializeToString()
    names = [n for node in first.graph.node for n in (*node.input, *node.output)]
    assert names and not any(n.startswith("onnx::") for n in names)
