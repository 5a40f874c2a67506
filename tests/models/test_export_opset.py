"""The export of a model whose backbone is of an opset before 7: Conv, Relu and Flatten of opset 6
import and train (onnxruntime has kernels for them), but the export wrote its Add (and, for a
standardizing device, its Sub and Div) into opset 6, where onnxruntime has no kernel for them and
an Add broadcasts only with broadcast = 1: stock onnxruntime refused the exported file. The
oracle: the runtime's own forward (its backbone session, then the trainer backend's predict)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.edge_runtime.trainer import make_backend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.export import export_model  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402


def _opset6_cnn(path) -> None:
    """x (1, 6, 6) -> Conv 3x3 (4) -> Relu -> Flatten (144) -> Gemm (8) -> Relu -> Gemm (3): opset 6,
    IR 3 (initializers listed as inputs too, as such files were written), Gemm with broadcast = 1."""
    rng = np.random.default_rng(0)
    inits = {"cw": rng.normal(size=(4, 1, 3, 3)) * 0.3, "cb": rng.normal(size=4) * 0.1,
             "w1": rng.normal(size=(8, 144)) * 0.2, "b1": rng.normal(size=8) * 0.1,
             "w2": rng.normal(size=(3, 8)) * 0.2, "b2": rng.normal(size=3) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"], axis=1),
             helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1, broadcast=1),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1, broadcast=1)]
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 6, 6]),
              *(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in tensors)]
    graph = helper.make_graph(nodes, "old", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)])
    model.ir_version = 3
    onnx.save(model, path)


@pytest.mark.parametrize("standardized", [False, True])
def test_an_opset6_backbone_exports_a_graph_stock_onnxruntime_runs(standardized, tmp_path):
    _opset6_cnn(tmp_path / "old.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "old.onnx"), num_classes=4, lora_rank=2))
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    model = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    rng = np.random.default_rng(1)
    params = {k: v + 0.1 * rng.normal(size=v.shape).astype(np.float32)  # LoRA B starts at 0: make it count
              for k, v in {**model.initial("shared"), **model.initial("personal")}.items()}
    shared = {k: params[k] for k in model.initial("shared")}
    personal = {k: params[k] for k in model.initial("personal")}
    raw = rng.normal(3.0, 2.0, size=(7, 1, 6, 6)).astype(np.float32)
    mean, std = raw.mean(axis=0).astype(np.float64), raw.std(axis=0).astype(np.float64) + 0.5
    exported = export_model(tmp_path / "art", shared, personal,
                            standardization=(mean, std) if standardized else None)
    onnx.checker.check_model(exported, full_check=True)
    session = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    x = ((raw - mean) / std).astype(np.float32) if standardized else raw
    want = make_backend("portable", tmp_path / "art", manifest, "sgd").predict(params, model.embed(x))["personal"]
    for batch in (1, 7):  # the batch stays free
        got = session.run(["logits"], {"x": raw[:batch]})[0]
        np.testing.assert_allclose(got, want[:batch], atol=1e-5)


def test_a_backbone_the_converter_cannot_take_is_refused_by_name(tmp_path, monkeypatch):
    from fedge.edge_runtime.kernel.errors import ConfigError
    from fedge.models import export

    _opset6_cnn(tmp_path / "old.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "old.onnx"), num_classes=4, lora_rank=2))
    build_artifacts(spec, tmp_path / "art", ort_training=False)
    model = ModelRuntime(tmp_path / "art")

    def fails(*_):  # a fake: onnx's converter has no adapter for some old ops and raises a bare RuntimeError
        raise RuntimeError("no adapter")

    monkeypatch.setattr(export.version_converter, "convert_version", fails)
    with pytest.raises(ConfigError, match="backbone is ONNX opset 6.*opset 7 or later.*no adapter"):
        export_model(tmp_path / "art", model.initial("shared"), model.initial("personal"))
