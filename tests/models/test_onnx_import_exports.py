"""What exporters write that the importer must read (a probe of graphs fedge did not write found
each): a batch dimension fixed at 1 with the flatten hard-coded as Reshape [1, -1] (torch's
legacy exporter with a batch-1 example; the dynamo exporter's allowzero = 1 variant), weights in
an external .data file (the dynamo exporter's default), IR 11, a Flatten between two dense
layers, and scikit-learn's class labels. Oracle for the backbones: the source graph run by ONNX
Runtime on one example at a time, at its own fixed batch of 1."""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.edge_runtime.trainer import make_backend  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402

RNG = np.random.default_rng(11)
CONV = RNG.normal(size=(3, 1, 2, 2)).astype(np.float32)
W1 = RNG.normal(size=(27, 5)).astype(np.float32)
W2 = RNG.normal(size=(5, 4)).astype(np.float32)


def _fixed_batch_cnn(allowzero: int = 0, shape=(1, -1), mix_batch: bool = False):
    """img (1, 1, 4, 4), batch fixed at 1 -> Conv (3, 2x2) -> Reshape to the constant `shape`
    -> MatMul (5) -> Relu -> MatMul (4). mix_batch: a ReduceMean over the batch axis first."""
    nodes = [helper.make_node("Conv", ["img", "cw"], ["c"], name="conv")]
    src = "c"
    if mix_batch:
        nodes.append(helper.make_node("ReduceMean", ["c"], ["cm"], name="mix", axes=[0], keepdims=1))
        src = "cm"
    nodes += [
        helper.make_node("Reshape", [src, "shape"], ["feat"], name="view", allowzero=allowzero),
        helper.make_node("MatMul", ["feat", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["a"], name="relu1"),
        helper.make_node("MatMul", ["a", "w2"], ["logits"], name="fc2"),
    ]
    inits = {"cw": CONV, "shape": np.array(shape, np.int64), "w1": W1, "w2": W2}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("img", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


def _one_at_a_time(model, x):
    """The source at its own batch of 1, run on each example alone: (features at the cut, logits)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("feat", TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [sess.run(["feat", "logits"], {"img": x[i:i + 1]}) for i in range(len(x))]
    return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


@pytest.mark.parametrize("allowzero,shape", [(0, (1, -1)), (1, (1, 27))])
def test_a_batch_fixed_at_one_gives_a_backbone_that_takes_any_batch(tmp_path, allowzero, shape):
    model = _fixed_batch_cnn(allowzero, shape)
    onnx.save(model, tmp_path / "fixed.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "fixed.onnx"), head="global"))
    assert spec.onnx_cut == "feat" and spec.input_shape == (1, 4, 4)
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    x = RNG.normal(size=(6, 1, 4, 4)).astype(np.float32)
    feat, logits = _one_at_a_time(model, x)
    z = runtime.embed(x)
    np.testing.assert_allclose(z, feat, rtol=1e-5, atol=1e-5)  # six rows in, six rows out
    backend = make_backend("portable", tmp_path / "art", manifest, "sgd")
    got = backend.predict({**runtime.initial("shared"), **runtime.initial("personal")}, z)["global"]
    np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)


def test_a_backbone_that_mixes_the_batch_is_refused_by_name(tmp_path):
    onnx.save(_fixed_batch_cnn(mix_batch=True), tmp_path / "mixed.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "mixed.onnx")))
    with pytest.raises(OnnxImportError, match=r"gave 1 row\(s\) of output for 3 examples in.*"
                                              "fixed at 1.*Reshape node 'view'.*dynamic batch axis"):
        build_artifacts(spec, tmp_path / "art", ort_training=False)


def test_weights_in_an_external_data_file_are_read_and_hashed(tmp_path):
    model = _fixed_batch_cnn()
    onnx.save(_fixed_batch_cnn(), tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.onnx.data", size_threshold=0)  # onnx.save moves the saved model's tensors out
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    data = (tmp_path / "m.onnx").read_bytes()
    expected = hashlib.sha256(data)
    expected.update(b"m.onnx.data\0" + hashlib.sha256((tmp_path / "m.onnx.data").read_bytes()).digest())
    assert spec.onnx_sha256 == expected.hexdigest()
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    x = RNG.normal(size=(3, 1, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id).embed(x),
                               _one_at_a_time(model, x)[0], rtol=1e-5, atol=1e-5)
    data_file = tmp_path / "m.onnx.data"
    data_file.write_bytes(data_file.read_bytes()[:-4] + b"\0\0\0\1")  # the weights changed, not the .onnx
    with pytest.raises(OnnxImportError, match="re-import"):
        build_artifacts(spec, tmp_path / "art2", ort_training=False)
    data_file.write_bytes(data_file.read_bytes()[:-8])  # truncated: once a raw numpy ValueError
    with pytest.raises(OnnxImportError, match="'m.onnx.data' at bytes .* it is truncated"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    data_file.unlink()
    with pytest.raises(OnnxImportError, match="'m.onnx.data', which cannot be read"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def test_external_data_outside_the_models_folder_is_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    onnx.save(_fixed_batch_cnn(), tmp_path / "sub" / "m.onnx", save_as_external_data=True, location="m.data",
              size_threshold=0)
    model = onnx.load(tmp_path / "sub" / "m.onnx", load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../m.data"
    (tmp_path / "m.data").write_bytes((tmp_path / "sub" / "m.data").read_bytes())
    onnx.save(model, tmp_path / "sub" / "m.onnx")
    with pytest.raises(OnnxImportError, match="not a file in the model's folder"):
        import_spec(ImportOptions(str(tmp_path / "sub" / "m.onnx")))


def test_a_model_stamped_ir_11_imports_when_its_ops_run(tmp_path):
    model = _fixed_batch_cnn()
    model.ir_version = 11
    (tmp_path / "ir11.onnx").write_bytes(model.SerializeToString())  # onnx.save would check it
    spec = import_spec(ImportOptions(str(tmp_path / "ir11.onnx")))
    build_artifacts(spec, tmp_path / "art", ort_training=False)
    backbone = onnx.load(tmp_path / "art" / "backbone.onnx")
    assert backbone.ir_version == onnx.IR_VERSION


def test_a_flatten_between_dense_layers_moves_the_cut_after_it(tmp_path):
    """Gemm -> Flatten -> Gemm: the Flatten is not the classifier's post-processing (the first
    Gemm was once taken for the classifier, here of 5 classes, and the second dropped)."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Flatten", ["a"], ["af"], name="flat", axis=1),
             helper.make_node("Gemm", ["af", "w2"], ["logits"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 27])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert (spec.onnx_cut, spec.onnx_features, spec.num_classes, spec.layers) == ("af", 5, 4, ())
    with pytest.raises(OnnxImportError, match="Flatten node 'flat' after 'a' comes before Gemm node 'fc2'"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="x"))


def test_class_labels_other_than_output_indices_are_named(tmp_path, caplog):
    """scikit-learn keeps classes_ in an ArrayFeatureExtractor after the ArgMax; the importer
    drops it with the post-processing, so it says what the outputs meant."""
    nodes = [helper.make_node("Gemm", ["x", "w2"], ["logits"], name="fc"),
             helper.make_node("ArgMax", ["logits"], ["idx"], name="argmax", axis=1),
             helper.make_node("ArrayFeatureExtractor", ["classes", "idx"], ["label"], name="labels",
                              domain="ai.onnx.ml")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, None)],
                              [numpy_helper.from_array(W2, "w2"),
                               numpy_helper.from_array(np.array([3, 5, 7, 9], np.int64), "classes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)])
    onnx.save(model, tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert spec.num_classes == 4
    assert "maps its 4 outputs to labels (0 -> 3, 1 -> 5, 2 -> 7, 3 -> 9)" in caplog.text
    caplog.clear()
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(np.arange(4, dtype=np.int64), "classes"))
    onnx.save(model, tmp_path / "m.onnx")
    with caplog.at_level(logging.WARNING, logger="fedge.models"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert "maps its" not in caplog.text


def test_a_sigmoid_binary_classifier_becomes_a_two_class_head(tmp_path):
    """One logit z and sigmoid(z), as scikit-learn's binary MLPClassifier and torch's
    BCE-trained models end: the head becomes logits [0, z], whose softmax gives class 1 the
    source's probability. Oracle: the source run by ONNX Runtime."""
    w_out = RNG.normal(size=(5, 1)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["z"], name="out"),
             helper.make_node("Sigmoid", ["z"], ["p"], name="sigmoid")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 27])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in {
                                  "w1": W1, "b1": np.full(5, 0.1, np.float32), "w2": w_out,
                                  "b2": np.array([0.3], np.float32)}.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, tmp_path / "binary.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "binary.onnx"), head="global"))
    assert spec.num_classes == 2 and [layer.units for layer in spec.layers] == [5]
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    x = RNG.normal(size=(8, 27)).astype(np.float32)
    backend = make_backend("portable", tmp_path / "art", manifest, "sgd")
    logits = backend.predict({**runtime.initial("shared"), **runtime.initial("personal")}, runtime.embed(x))["global"]
    p_class1 = np.exp(logits[:, 1]) / np.exp(logits).sum(axis=1)
    source = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(p_class1, source.run(["p"], {"x": x})[0][:, 0], rtol=1e-5, atol=1e-6)


def test_one_output_without_a_sigmoid_is_refused_by_name(tmp_path):
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["z"], name="out")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W2[:, :1].copy(), "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match="'out' gives one value and no Sigmoid follows it"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert import_spec(ImportOptions(str(tmp_path / "m.onnx"), num_classes=3)).num_classes == 3  # a new head


def _softmax_after_classifier(reshape, axis: int, op: str = "Softmax"):
    """x (N, 27) -> Gemm (10 logits) -> [Reshape to `reshape`] -> `op` over `axis`."""
    nodes = [helper.make_node("Gemm", ["x", "w"], ["z"], name="out")]
    inits = [numpy_helper.from_array(RNG.normal(size=(27, 10)).astype(np.float32), "w")]
    src = "z"
    if reshape is not None:
        nodes.append(helper.make_node("Reshape", ["z", "shape"], ["zr"], name="group"))
        inits.append(numpy_helper.from_array(np.array(reshape, np.int64), "shape"))
        src = "zr"
    nodes.append(helper.make_node(op, [src], ["p"], name="norm", axis=axis))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 27])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("reshape, axis, shape", [((-1, 2, 5), -1, r"\['N', 2, 5\]"), (None, 0, r"\['N', 10\]"),
                                                  ((-1, 5), 1, r"\[None, 5\]|\['N', 5\]")])
def test_a_softmax_over_other_than_the_classes_is_refused_by_name(tmp_path, reshape, axis, shape):
    """Two 5-way softmaxes over 10 logits, or one over the batch, once imported as a 10-class head
    whose probabilities the source never gave. Kept as is it is refused; a new head drops it."""
    onnx.save(_softmax_after_classifier(reshape, axis), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=rf"Softmax node 'norm' normalizes axis {axis} of a tensor of shape "
                                              rf"({shape}).*classifier 'out' \(10 outputs\).*--classes K"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert import_spec(ImportOptions(str(tmp_path / "m.onnx"), num_classes=3)).num_classes == 3


@pytest.mark.parametrize("op, axis", [("Softmax", 1), ("Softmax", -1), ("LogSoftmax", 1)])
def test_a_softmax_over_the_classes_keeps_the_head(tmp_path, op, axis):
    onnx.save(_softmax_after_classifier(None, axis, op), tmp_path / "m.onnx")
    assert import_spec(ImportOptions(str(tmp_path / "m.onnx"))).num_classes == 10


def test_a_backbone_onnx_runtime_cannot_load_is_refused_with_its_reason(tmp_path):
    """A source stamped with an opset newer than the build's ONNX Runtime: ORT's message names a
    C++ function first and the reason last; the error once kept the first 300 characters only."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="pre"),
             helper.make_node("Gemm", ["r", "w"], ["z"], name="out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W2, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 99)])
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        pytest.skip(f"onnxruntime {ort.__version__} loads opset 99")
    except Exception as exc:  # ORT's own types
        reason = str(exc).splitlines()[0]
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="r"))
    with pytest.raises(OnnxImportError, match="cannot load the backbone cut from it") as err:
        build_artifacts(spec, tmp_path / "art", ort_training=False)
    assert reason[-60:] in str(err.value)  # the reason, at the end of ORT's line


def _scaled_mlp(numerator: bool = False):
    """x (N, 27) -> Gemm (5) -> Mul by 0.5 (the constant first) -> Relu -> MatMul + Add (4)
    -> Div by a Constant node 2.0 (a temperature; numerator: 2.0 / logits) -> Softmax."""
    div = ["t", "logits"] if numerator else ["logits", "t"]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Mul", ["half", "h"], ["hs"], name="scale"),
             helper.make_node("Relu", ["hs"], ["a"], name="relu1"),
             helper.make_node("MatMul", ["a", "w2"], ["mm"], name="out"),
             helper.make_node("Add", ["mm", "b2"], ["logits"], name="out_bias"),
             helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.array(2.0, np.float32))),
             helper.make_node("Div", div, ["scaled"], name="temperature"),
             helper.make_node("Softmax", ["scaled"], ["p"], name="softmax", axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 27])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in {
                                  "w1": W1, "b1": np.full(5, 0.1, np.float32), "half": np.array([0.5], np.float32),
                                  "w2": W2, "b2": np.array([0.3, -0.2, 0.1, 0.0], np.float32)}.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_a_scale_by_one_stored_number_folds_into_the_layer(tmp_path):
    """A classifier's temperature (logits / T, torch's `self.fc(h) / self.t`) and a scalar Mul
    in a hidden layer were refused ('Div node ... cut later', with nothing dense after it); they
    fold into W and b. Oracle: the source's probabilities, run by ONNX Runtime."""
    model = _scaled_mlp()
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    assert spec.onnx_cut == "x" and [(layer.units, layer.activation) for layer in spec.layers] == [(5, "relu")]
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    x = RNG.normal(size=(8, 27)).astype(np.float32)
    backend = make_backend("portable", tmp_path / "art", manifest, "sgd")
    logits = backend.predict({**runtime.initial("shared"), **runtime.initial("personal")}, runtime.embed(x))["global"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    source = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(probs / probs.sum(axis=1, keepdims=True), source.run(["p"], {"x": x})[0],
                               rtol=1e-5, atol=1e-6)
    onnx.save(_scaled_mlp(numerator=True), tmp_path / "n.onnx")  # 2 / logits is not a scale
    with pytest.raises(OnnxImportError, match="Div node 'temperature'"):
        import_spec(ImportOptions(str(tmp_path / "n.onnx")))


def test_a_multi_label_sigmoid_head_is_refused_as_is_and_replaced_with_classes(tmp_path):
    """K outputs each through a Sigmoid (a multi-label model) are not one softmax over K: kept
    as is that is refused by name; --classes K (a new head) once met the same refusal, though
    the source's head is dropped, and now imports the hidden layers."""
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Gemm", ["a", "w2"], ["z"], name="out"),
             helper.make_node("Sigmoid", ["z"], ["p"], name="sigmoid")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 27])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in {
                                  "w1": W1, "b1": np.zeros(5, np.float32), "w2": W2}.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match="classifier 'out' ends in sigmoid.*give --classes K"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), num_classes=3))
    assert spec.onnx_cut == "x" and [layer.units for layer in spec.layers] == [5] and spec.num_classes == 3
    build_artifacts(spec, tmp_path / "art", ort_training=False)
