"""A cut whose size follows a free input dimension (models/onnx_batch.py): a Conv1d over a
sequence of free length L, flattened into a dense layer made for one L. At another input shape
the backbone gave more features than the manifest (and the tail) said, the whole-model check was
skipped (ONNX Runtime cannot run the source there either), and the build succeeded."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from fedge.models.onnx_probe import run_to  # noqa: E402

RNG = np.random.default_rng(31)


def _conv1d(path) -> onnx.ModelProto:
    """x (N, 3, L) -> Conv1d (4, k=3) -> Flatten (4 * (L - 2)) -> MatMul (16 -> 3): made for L = 6."""
    nodes = [helper.make_node("Conv", ["x", "k"], ["c"], name="conv"),
             helper.make_node("Flatten", ["c"], ["feat"], name="flat"),
             helper.make_node("MatMul", ["feat", "w"], ["logits"], name="fc"),
             helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1)]
    inits = {"k": RNG.normal(size=(4, 3, 3)).astype(np.float32), "w": RNG.normal(size=(16, 3)).astype(np.float32)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "L"])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, path)
    return model


def test_at_the_length_the_dense_layer_was_made_for_it_builds(tmp_path):
    """Oracle: ONNX Runtime's run of the source up to the cut."""
    model = _conv1d(tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), input_shape=(3, 6)))
    assert (spec.onnx_cut, spec.onnx_features) == ("feat", 16)
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    x = RNG.normal(size=(5, 3, 6)).astype(np.float32)
    np.testing.assert_allclose(ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id).embed(x),
                               run_to(model, {"x": x}, ["feat"])[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"cut": "feat", "num_classes": 4}])
def test_at_another_length_the_build_refuses_it_by_name(tmp_path, options):
    _conv1d(tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), input_shape=(3, 8), **options))
    with pytest.raises(OnnxImportError, match=r"the backbone gives 24 features per example for input shape \(3, 8\), "
                                              "but the layer after the cut takes 16"):
        build_artifacts(spec, tmp_path / "art", ort_training=False)
    assert not (tmp_path / "art" / "manifest.json").exists()


def _mlp(path, w1_rows: int, w2_rows: int) -> None:
    """x (N, 4) -> MatMul (w1_rows -> 3) -> Relu -> MatMul (w2_rows -> 3) -> Softmax."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["logits"], name="fc2"),
             helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1)]
    inits = {"w1": RNG.normal(size=(w1_rows, 3)).astype(np.float32),
             "w2": RNG.normal(size=(w2_rows, 3)).astype(np.float32)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


@pytest.mark.parametrize("options", [{}, {"num_classes": 4}])
def test_a_first_layer_of_other_width_than_the_input_is_refused_at_the_build(tmp_path, options):
    """A 5-row weight on a 4-feature input (no backbone): the whole-model check was skipped (ONNX
    Runtime cannot run the source), and the build wrote artifacts no device could train."""
    _mlp(tmp_path / "m.onnx", 5, 3)
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), **options))
    with pytest.raises(OnnxImportError, match=r"the input 'x' gives 4 features per example \(4,\), but the first "
                                              "layer takes 5: the file's weights do not fit its graph"):
        build_artifacts(spec, tmp_path / "art", ort_training=False)
    assert not (tmp_path / "art" / "manifest.json").exists()


def test_a_hidden_layer_of_other_width_is_refused_at_the_build(tmp_path):
    """The tail refuses fc2 after fc1 (3 outputs, 5 inputs), so the cut moves after fc1: the
    backbone's width check names it."""
    _mlp(tmp_path / "m.onnx", 4, 5)
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    with pytest.raises(OnnxImportError, match=r"the backbone gives 3 features per example for input shape \(4,\), "
                                              "but the layer after the cut takes 5: the file's weights do not fit"):
        build_artifacts(spec, tmp_path / "art", ort_training=False)
