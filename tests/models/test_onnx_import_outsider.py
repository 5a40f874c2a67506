"""Graphs from an outside user's probe of the ONNX import (torch, skl2onnx and hand-written
Keras-like graphs) that imported wrongly. Oracle: the source run by ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402

RNG = np.random.default_rng(5)
W1 = RNG.normal(size=(12, 6)).astype(np.float32)
W2 = RNG.normal(size=(6, 4)).astype(np.float32)
PRIOR = np.array([3.0, -3.0, 0.0, 1.5], np.float32)


def _mlp_then(post: list[onnx.NodeProto], out: str) -> onnx.ModelProto:
    """x (N, 12) -> Gemm 6 -> Relu -> Gemm 4 ('logits') -> the nodes `post` -> `out`."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Gemm", ["a", "w2"], ["logits"], name="out"), *post]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in {"w1": W1, "w2": W2, "prior": PRIOR}.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("post", [
    [helper.make_node("Flatten", ["logits"], ["f"], name="flat"), helper.make_node("Add", ["f", "prior"], ["y"],
                                                                                   name="logit_adjust")],
    [helper.make_node("LogSoftmax", ["logits"], ["f"], name="lsm"), helper.make_node("Add", ["f", "prior"], ["y"],
                                                                                      name="logit_adjust")],
])
def test_arithmetic_after_the_classifiers_post_processing_is_not_dropped_silently(tmp_path, post):
    """The tail ended at the first post-processing op (Flatten, LogSoftmax) and dropped the rest:
    a per-class prior added after it vanished, and the kept head predicted another class than
    the source. Kept as is that is now refused naming the node; a new head takes the model."""
    model = _mlp_then(post, "y")
    source = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = RNG.normal(size=(64, 12)).astype(np.float32)
    adjusted, logits = source.run(["y"], {"x": x})[0], np.maximum(x @ W1, 0) @ W2
    assert (adjusted.argmax(1) != logits.argmax(1)).any()  # the dropped Add changes the predictions
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match="Add node 'logit_adjust' is computed from the output of classifier "
                                              "'out'.*give --classes K"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), num_classes=4))
    assert spec.onnx_cut == "x" and [layer.units for layer in spec.layers] == [6] and not spec.onnx_keep_head


def test_post_processing_that_keeps_the_prediction_keeps_the_head(tmp_path):
    """Flatten, Softmax, ArgMax, TopK, ReduceMax after the classifier change no prediction."""
    post = [helper.make_node("Flatten", ["logits"], ["f"]), helper.make_node("Softmax", ["f"], ["p"], axis=-1),
            helper.make_node("ArgMax", ["p"], ["label"], axis=1),
            helper.make_node("ReduceMax", ["p"], ["confidence"], axes=[1]),
            helper.make_node("TopK", ["p", "k"], ["top", "top_i"], axis=1)]
    model = _mlp_then(post, "p")
    model.graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), "k"))
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert spec.onnx_keep_head and spec.num_classes == 4


def test_a_backbone_tensor_named_logits_still_exports(tmp_path):
    """A source whose frozen part has a tensor named 'logits' (a Keras layer's name; here the
    first layer, frozen by the Elu after it) imported and trained, and then `fedge device
    export` refused it ('backbone.onnx already has a tensor named logits'). That tensor moves
    aside; the export gives what the source gives. Oracle: ONNX Runtime on the source."""

    w0 = RNG.normal(size=(12, 12)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w0"], ["logits"], name="dense"),
             helper.make_node("Elu", ["logits"], ["f"], name="elu", alpha=0.1),
             helper.make_node("Gemm", ["f", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Gemm", ["a", "w2"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in {"w0": w0, "w1": W1, "w2": W2}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    assert spec.onnx_cut == "f"
    _assert_export_gives_the_sources_y(spec, model, tmp_path)


def test_a_rebuild_without_a_backbone_removes_the_earlier_ones(tmp_path):
    """Re-importing into the same folder with a cut at the input (no backbone) left the earlier
    build's backbone.onnx there, and ModelRuntime and export, which look for that file, ran it:
    embeddings of 6 features for a model that takes 12. Oracle: ONNX Runtime on the source."""
    from fedge.edge_runtime.model_runtime import ModelRuntime
    from fedge.models.build import build_artifacts
    from fedge.models.export import export_model

    model = _mlp_then([helper.make_node("Softmax", ["logits"], ["p"], axis=-1)], "p")
    onnx.save(model, tmp_path / "m.onnx")
    build_artifacts(import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="a")), tmp_path / "art",
                    ort_training=False)
    assert (tmp_path / "art" / "backbone.onnx").exists()
    manifest = build_artifacts(import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global")), tmp_path / "art",
                               ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    x = RNG.normal(size=(5, 12)).astype(np.float32)
    np.testing.assert_array_equal(runtime.embed(x), x)
    exported = export_model(tmp_path / "art", runtime.initial("shared"), runtime.initial("personal"))
    logits = ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["logits"], {"x": x})[0]
    source = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["p"], {"x": x})[0]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probs / probs.sum(axis=1, keepdims=True), source, rtol=1e-5, atol=1e-6)


def test_a_matmul_with_a_scalar_bias_joins_the_tail(tmp_path):
    """MatMul + Add of one stored number is a dense layer (ONNX broadcasts it, as Gemm's C): it
    was refused ('bias of 1 values for 6 outputs'), so the automatic cut moved past the layer and
    froze it, naming 'Add, Relu' as the reason. Oracle: ONNX Runtime on the source."""

    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
             helper.make_node("Add", ["m", "b1"], ["h"], name="bias1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("MatMul", ["a", "w2"], ["m2"], name="out"),
             helper.make_node("Add", ["m2", "b2"], ["y"], name="bias2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in {
                                  "w1": W1, "b1": np.array(0.25, np.float32), "w2": W2, "b2": PRIOR}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    assert spec.onnx_cut == "x" and [(layer.units, layer.activation) for layer in spec.layers] == [(6, "relu")]
    _assert_export_gives_the_sources_y(spec, model, tmp_path)
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.zeros((6, 1), np.float32), "b1"))
    onnx.save(model, tmp_path / "n.onnx")  # a (6, 1) bias widens (N, 6) to (6, 6): not a bias
    with pytest.raises(OnnxImportError, match=r"Add node 'bias1': bias of shape \(6, 1\) for 6 outputs"):
        import_spec(ImportOptions(str(tmp_path / "n.onnx"), cut="x"))


def test_an_input_without_a_batch_dimension_is_named(tmp_path):
    """A rank-1 input (N missing) was told it had free dimensions and to give --input-shape,
    which it then refused as not fitting the input ()."""
    nodes = [helper.make_node("Unsqueeze", ["v", "axes"], ["x"], name="batch"),
             helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Gemm", ["a", "w2"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("v", TensorProto.FLOAT, [12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in {
                                  "w1": W1, "w2": W2, "axes": np.array([0], np.int64)}.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    for shape in ((), (12,)):
        with pytest.raises(OnnxImportError, match="input 'v' has rank 1, no batch dimension.*re-export"):
            import_spec(ImportOptions(str(tmp_path / "m.onnx"), input_shape=shape))


def test_an_input_that_declares_no_shape_is_named_as_such(tmp_path):
    """An input with no shape at all (its rank unknown, as a hand-written graph may leave it) was
    told it had rank 0 and no batch dimension."""
    model = _mlp_then([], "logits")
    model.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match="input 'x' declares no shape, so its rank is unknown.*re-export"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def _assert_export_gives_the_sources_y(spec, model, tmp_path) -> None:
    """Build the import, export its initial model, and compare the logits with ONNX Runtime's run
    of the source's output `y` on the same inputs."""
    from fedge.edge_runtime.model_runtime import ModelRuntime
    from fedge.models.build import build_artifacts
    from fedge.models.export import export_model

    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    exported = export_model(tmp_path / "art", runtime.initial("shared"), runtime.initial("personal"))
    x = RNG.normal(size=(5, 12)).astype(np.float32)
    run = lambda m, name: ort.InferenceSession(m.SerializeToString(),  # noqa: E731
                                               providers=["CPUExecutionProvider"]).run([name], {"x": x})[0]
    np.testing.assert_allclose(run(exported, "logits"), run(model, "y"), rtol=1e-5, atol=1e-5)
