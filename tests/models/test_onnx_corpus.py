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
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402

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


def test_a_cut_of_integers_is_refused_naming_it_and_its_node():
    """An ArgMax's int64 output as the cut: ONNX Runtime refused the backbone's float output
    ('Type Error: Type (tensor(float)) of output arg (z) of node (fedge_cut)'), naming neither."""
    source = _corpus("node/test_argmax_default_axis_example/model.onnx")
    node = onnx.load(source).graph.node[0]
    with pytest.raises(OnnxImportError, match=rf"the cut 'result' holds INT64 values \(written by ArgMax node "
                                              rf"'{node.name or node.output[0]}'\).*cut at a float tensor"):
        import_spec(ImportOptions(source, cut="result", num_classes=3))


def test_computed_dense_weights_are_named_with_the_node_that_computes_them():
    """The corpus's 'light' AlexNet, VGG, ResNet ... compute every weight with ConstantOfShape;
    the refusal listed the op types the graph holds, not which dense node or why."""
    source = _corpus("light/light_bvlc_alexnet.onnx")
    nodes = onnx.load(source).graph.node
    last = [n for n in nodes if n.op_type == "Gemm"][-1]
    writer = next(n for n in nodes if last.input[1] in n.output)
    assert writer.op_type == "ConstantOfShape"
    with pytest.raises(OnnxImportError, match=rf"the last, Gemm node '{last.name}', multiplies by "
                                              rf"'{last.input[1]}', computed by ConstantOfShape node "
                                              rf"'{writer.name or writer.output[0]}', not stored"):
        import_spec(ImportOptions(source))


def test_the_nearest_refusal_names_the_file_once():
    """onnxruntime's logreg_iris (one-vs-rest LOGISTIC, refused as no softmax head): the refusal
    quoted the nearest layer's own refusal with the file's path in it a second time."""
    source = _corpus("onnxruntime/datasets/logreg_iris.onnx")
    with pytest.raises(OnnxImportError, match="LinearClassifier node") as exc:
        import_spec(ImportOptions(source))
    assert str(exc.value).count(source) == 1


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


def test_the_added_default_opset_is_the_one_the_source_functions_import(tmp_path):
    """The default-domain opset added for the backbone's Flatten (a source importing ai.onnx.ml
    alone) was always 13; a local function of default-domain ops at opset 18 then made the
    backbone invalid ('FunctionOp imports version 18 whereas model imports version 13')."""
    from onnx import TensorProto, helper

    twice = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                                 [helper.make_opsetid("", 18)])
    nodes = [helper.make_node("Binarizer", ["X"], ["bz"], domain="ai.onnx.ml", threshold=0.0),
             helper.make_node("Twice", ["bz"], ["Y"], domain="local")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 3),
                                                    helper.make_opsetid("local", 1)], functions=[twice])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)  # the source itself is valid
    source = tmp_path / "fn.onnx"
    onnx.save(model, source)
    spec = import_spec(ImportOptions(str(source), cut="Y", num_classes=3))
    build_artifacts(spec, tmp_path / "art", ort_training=False)
    x = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_array_equal(ModelRuntime(tmp_path / "art").embed(x), 2.0 * (x > 0))  # Binarizer, then Add


@pytest.mark.parametrize("ir", [3, 8])
def test_an_input_with_a_default_value_is_refused_as_such(tmp_path, ir):
    """The model's one input x also has an initializer of its name (its default value; IR 3 lists
    initializers as inputs, IR 4+ allows it): the refusal said 'the model has 0 inputs []'."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in
                               (("x", ["N", 4]), ("W", [4, 3]))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [w, numpy_helper.from_array(np.zeros((1, 4), np.float32), "x")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = ir
    onnx.checker.check_model(model)
    source = tmp_path / "default.onnx"
    onnx.save(model, source)
    with pytest.raises(OnnxImportError, match=r"every graph input \['x', 'W'\] has a stored value"):
        import_spec(ImportOptions(str(source)))
