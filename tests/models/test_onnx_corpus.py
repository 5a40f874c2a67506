"""Models from the corpus the `onnx` wheel ships (backend/test/data) and onnxruntime's datasets,
written by others, that the import mishandled (benchmarks/results/2026-12-06-onnx-corpus).
Oracles: ONNX Runtime's run of the source, and the file's own nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def _corpus(rel: str) -> str:
    path = DATA / rel if not rel.startswith("onnxruntime/") else Path(ort.__file__).parent / rel.split("/", 1)[1]
    if not path.is_file():
        pytest.skip(f"{rel} is not in this onnx/onnxruntime wheel")
    return str(path)


def test_a_source_of_ai_onnx_ml_ops_alone_gets_a_valid_backbone(tmp_path):
    """A Binarizer (ai.onnx.ml, the source's only opset) as the frozen backbone of a new head: the
    backbone fedge cut out added a Flatten with no default-domain opset to run it, and the import
    failed 'not a valid ONNX model: No opset import for domain'. The backbone now gives what the
    source gives, flattened."""
    source = _corpus("node/test_ai_onnx_ml_binarizer/model.onnx")
    spec = import_spec(ImportOptions(source, cut="Y", num_classes=3))
    build_artifacts(spec, tmp_path / "art", ort_training=False)
    x = np.random.default_rng(0).normal(size=(3, *spec.input_shape)).astype(np.float32)  # the source's batch: 3
    (want,) = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(["Y"], {"X": x})
    np.testing.assert_array_equal(ModelRuntime(tmp_path / "art").embed(x), want.reshape(3, -1))


def test_an_ir3_source_whose_initializers_are_inputs_gets_a_valid_backbone(tmp_path):
    """IR 3 lists every initializer as a graph input too (torch's Conv2d test export; the wheel's
    'light' ResNet, VGG, ...). The backbone keeps x as its only input, and at the source's IR 3
    the import failed 'not a valid ONNX model: 1 in initializer but not in graph input'."""
    source = _corpus("pytorch-converted/test_Conv2d/model.onnx")
    model = onnx.load(source)
    assert model.ir_version < 4 and {i.name for i in model.graph.initializer} <= {i.name for i in model.graph.input}
    out, x_name = model.graph.output[0].name, model.graph.input[0].name
    spec = import_spec(ImportOptions(source, cut=out, num_classes=3))
    build_artifacts(spec, tmp_path / "art", ort_training=False)
    batch = model.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    x = np.random.default_rng(0).normal(size=(batch, *spec.input_shape)).astype(np.float32)
    (want,) = ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run([out], {x_name: x})
    np.testing.assert_allclose(ModelRuntime(tmp_path / "art").embed(x), want.reshape(batch, -1), rtol=1e-5, atol=1e-6)
