"""Edges of the ONNX importer's tail reading that the mutation5-models audit found untested
(benchmarks/results/2026-12-06-mutation5-models): a temperature Div (logits / T, not T / logits),
a LeakyRelu of slope 1, an int64 cut. Oracle: ONNX Runtime running the source, or a hand case."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from tests.models.test_onnx_import_outsider import W1, W2, _assert_export_gives_the_sources_y  # noqa: E402


def _model(tail: list[onnx.NodeProto], out: str, extra: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """x (N, 12) -> Gemm 6 ('h') -> the nodes `tail` -> `out`; w2 (6, 4) and `extra` stored."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"), *tail]
    inits = {"w1": W1, "w2": W2, **(extra or {})}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _save(model: onnx.ModelProto, tmp_path) -> str:
    onnx.save(model, tmp_path / "m.onnx")
    return str(tmp_path / "m.onnx")


T = np.array(4.0, np.float32)


def test_a_temperature_divides_the_logits(tmp_path):
    """logits / T is folded into the classifier as W / T, b / T (not W * T)."""
    model = _model([helper.make_node("Relu", ["h"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w2"], ["z"], name="out"),
                    helper.make_node("Div", ["z", "t"], ["y"], name="temperature")], "y", {"t": T})
    spec = import_spec(ImportOptions(_save(model, tmp_path), head="global"))
    assert spec.onnx_cut == "x" and [layer.units for layer in spec.layers] == [6]
    _assert_export_gives_the_sources_y(spec, model, tmp_path)


def test_t_over_the_logits_is_no_temperature(tmp_path):
    """T / logits is no scaling of the logits: no dense tail ends at the output."""
    model = _model([helper.make_node("Relu", ["h"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w2"], ["z"], name="out"),
                    helper.make_node("Div", ["t", "z"], ["y"], name="inverse")], "y", {"t": T})
    with pytest.raises(OnnxImportError, match="found no dense tail to train"):
        import_spec(ImportOptions(_save(model, tmp_path)))


def test_a_leaky_relu_of_slope_1_is_a_trainable_activation(tmp_path):
    """The spec takes slopes 0 to 1, both ends included (LayerSpec): slope 1 joins the tail."""
    model = _model([helper.make_node("LeakyRelu", ["h"], ["a"], name="act1", alpha=1.0),
                    helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")], "y")
    spec = import_spec(ImportOptions(_save(model, tmp_path), head="global"))
    assert spec.onnx_cut == "x"
    assert [(layer.units, layer.activation, layer.negative_slope) for layer in spec.layers] == [(6, "leaky_relu", 1.0)]
    _assert_export_gives_the_sources_y(spec, model, tmp_path)


def test_an_int64_cut_is_refused_by_name(tmp_path):
    """A cut that holds int64 values (an ArgMax's) cannot feed the float32 tail."""
    model = _model([helper.make_node("ArgMax", ["h"], ["k"], name="pick", axis=1, keepdims=1),
                    helper.make_node("Cast", ["k"], ["kf"], name="tofloat", to=TensorProto.FLOAT),
                    helper.make_node("Gemm", ["kf", "w3"], ["y"], name="out")], "y",
                   {"w3": np.ones((1, 4), np.float32)})
    with pytest.raises(OnnxImportError, match="the cut 'k' holds INT64 values \\(written by ArgMax node 'pick'\\)"):
        import_spec(ImportOptions(_save(model, tmp_path), cut="k", num_classes=4))


def test_the_tanh_approximation_of_gelu_spelled_out_stays_frozen(tmp_path):
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) differs from x Phi(x) by up to 5e-4 (module
    doc of onnx_activation): not the erf GELU the device trains, so the cut moves past it."""
    consts = {"three": np.array(3.0, np.float32), "c": np.array(0.044715, np.float32),
              "k": np.array(np.sqrt(2 / np.pi), np.float32), "one": np.array(1.0, np.float32),
              "half": np.array(0.5, np.float32)}
    steps = [("Pow", ["h", "three"]), ("Mul", ["g0", "c"]), ("Add", ["h", "g1"]), ("Mul", ["g2", "k"]),
             ("Tanh", ["g3"]), ("Add", ["g4", "one"]), ("Mul", ["h", "g5"]), ("Mul", ["g6", "half"])]
    nodes = [helper.make_node(op, inputs, [f"g{i}"], name=f"gelu{i}") for i, (op, inputs) in enumerate(steps)]
    model = _model([*nodes, helper.make_node("MatMul", ["g7", "w2"], ["y"], name="out")], "y", consts)
    spec = import_spec(ImportOptions(_save(model, tmp_path), head="global"))
    assert spec.onnx_cut == "g7" and spec.layers == ()


def test_a_binary_logistic_classifier_whose_intercepts_are_not_mirrored_is_refused(tmp_path):
    """[-s, s] imports as the head [0, s] only when the intercepts are mirrored too (b0 = -b1): with
    b = (0.5, 0.3) ONNX Runtime gives two separate sigmoids, which no softmax over [0, s] is."""
    w = np.arange(1.0, 13.0, dtype=np.float32) / 10
    node = helper.make_node("LinearClassifier", ["x"], ["label", "probabilities"], name="lc", domain="ai.onnx.ml",
                            coefficients=[*(-w), *w], intercepts=[0.5, 0.3], classlabels_ints=[0, 1],
                            post_transform="LOGISTIC")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("label", TensorProto.INT64, None),
                               helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)])
    with pytest.raises(OnnxImportError, match=r"post_transform LOGISTIC with 2 score\(s\) for 2 classes"):
        import_spec(ImportOptions(_save(model, tmp_path)))


def test_one_logit_and_a_sigmoid_become_the_head_zero_then_z(tmp_path):
    """p = sigmoid(z) = softmax([0, z])[1]: class 1's column is the source's weights, class 0's is
    zeros (oracle: ONNX Runtime's p against the softmax of the export's logits)."""
    import onnxruntime as ort

    from fedge.edge_runtime.model_runtime import ModelRuntime
    from fedge.models.build import build_artifacts
    from fedge.models.export import export_model

    model = _model([helper.make_node("Relu", ["h"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w3"], ["z"], name="out"),
                    helper.make_node("Sigmoid", ["z"], ["y"], name="p")], "y", {"w3": W2[:, :1].copy()})
    spec = import_spec(ImportOptions(_save(model, tmp_path), head="global"))
    assert spec.num_classes == 2
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    exported = export_model(tmp_path / "art", runtime.initial("shared"), runtime.initial("personal"))
    x = np.random.default_rng(3).normal(size=(5, 12)).astype(np.float32)
    run = lambda m, name: ort.InferenceSession(m.SerializeToString(),  # noqa: E731
                                               providers=["CPUExecutionProvider"]).run([name], {"x": x})[0]
    logits = run(exported, "logits").astype(np.float64)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose((p / p.sum(axis=1, keepdims=True))[:, 1], run(model, "y")[:, 0], rtol=1e-5, atol=1e-6)


def test_a_sub_after_a_multiclass_head_is_not_dropped(tmp_path):
    """Sub and Concat are post-processing only of a binary Sigmoid head ([1 - p, p]); after a
    four-class head a Sub of a prior changes the predictions and is refused by name."""
    from tests.models.test_onnx_import_outsider import _mlp_then

    model = _mlp_then([helper.make_node("Flatten", ["logits"], ["f"], name="flat"),
                       helper.make_node("Sub", ["f", "prior"], ["y"], name="logit_adjust")], "y")
    with pytest.raises(OnnxImportError, match="Sub node 'logit_adjust' is computed from the output of classifier"):
        import_spec(ImportOptions(_save(model, tmp_path)))


def test_a_new_head_on_a_cut_of_one_value_per_example_and_no_feature_axis_is_refused(tmp_path):
    """A cut of shape (N,) has no feature axis: the new head's cut needs (N, features...)."""
    model = _model([helper.make_node("ReduceMax", ["h"], ["r"], name="most", axes=[1], keepdims=0),
                    helper.make_node("Unsqueeze", ["r", "ax"], ["r1"], name="col"),
                    helper.make_node("MatMul", ["r1", "w3"], ["y"], name="out")], "y",
                   {"ax": np.array([1], np.int64), "w3": np.ones((1, 4), np.float32)})
    with pytest.raises(OnnxImportError, match=r"the cut 'r' has per-example shape \(batch, \); a new head needs"):
        import_spec(ImportOptions(_save(model, tmp_path), cut="r", num_classes=3))


def test_an_input_wider_than_the_first_layer_is_refused_at_the_build(tmp_path):
    """x of 14 features (a free dim the user set) reaching a first layer of 12 rows: no backbone,
    and the build names both sizes, as for an input narrower than the layer."""
    from fedge.models.build import build_artifacts

    model = _model([helper.make_node("Relu", ["h"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")], "y")
    model.graph.input[0].type.tensor_type.shape.dim[1].Clear()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "F"
    spec = import_spec(ImportOptions(_save(model, tmp_path), input_shape=(14,), head="global"))
    with pytest.raises(OnnxImportError, match=r"gives 14 features per example \(14,\), but the first layer takes 12"):
        build_artifacts(spec, tmp_path / "art", ort_training=False)


def test_a_fixed_batch_of_1_whose_backbone_mixes_examples_is_refused(tmp_path):
    """torch exports at batch 1 by default: the backbone given a free batch must still treat each
    example alone; x - mean over the batch does not (0 for one example, not for three)."""
    from fedge.models.build import build_artifacts

    model = _model([helper.make_node("ReduceMean", ["x"], ["m"], name="batch_mean", axes=[0], keepdims=1),
                    helper.make_node("Sub", ["x", "m"], ["c"], name="center"),
                    helper.make_node("Gemm", ["c", "w1"], ["h2"], name="fc2"),
                    helper.make_node("Relu", ["h2"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")], "y")
    model.graph.node.remove(model.graph.node[0])  # no fc1: x -> center -> fc2 -> out
    model.graph.input[0].type.tensor_type.shape.dim[0].Clear()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    spec = import_spec(ImportOptions(_save(model, tmp_path), head="global"))
    assert spec.onnx_cut == "c"
    with pytest.raises(OnnxImportError, match="does not treat the examples of a batch separately"):
        build_artifacts(spec, tmp_path / "art", ort_training=False)


def test_a_leaky_relu_of_slope_inf_in_the_backbone_is_refused(tmp_path):
    """An Inf slope scales every negative feature to -Inf: refused by name, as an Inf weight is."""
    model = _model([helper.make_node("Relu", ["h"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")], "y")
    model.graph.node.insert(0, helper.make_node("LeakyRelu", ["x"], ["l"], name="leak", alpha=float("inf")))
    model.graph.node[1].input[0] = "l"  # fc1 reads the LeakyRelu
    with pytest.raises(OnnxImportError, match="attribute alpha of LeakyRelu node 'leak' in the frozen backbone"):
        import_spec(ImportOptions(_save(model, tmp_path)))


def test_a_batchnorm_with_a_nan_scale_after_a_layer_is_not_folded(tmp_path):
    """Folding NaN statistics into the layer would make NaN weights; the node is named instead."""
    scale = np.ones(6, np.float32)
    scale[2] = np.nan
    stats = {"s": scale, "sh": np.zeros(6, np.float32), "mu": np.zeros(6, np.float32), "var": np.ones(6, np.float32)}
    model = _model([helper.make_node("BatchNormalization", ["h", "s", "sh", "mu", "var"], ["n"], name="bn"),
                    helper.make_node("Relu", ["n"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")], "y", stats)
    with pytest.raises(OnnxImportError, match="stored tensor 's', read by BatchNormalization node 'bn'"):
        import_spec(ImportOptions(_save(model, tmp_path)))


def test_a_new_head_on_an_empty_cut_is_refused(tmp_path):
    """h[:, 0:0] has shape (N, 0): no features for a new head, refused by name (not a spec of 0
    features)."""
    model = _model([helper.make_node("Slice", ["h", "s0", "s0", "ax"], ["e"], name="empty"),
                    helper.make_node("Relu", ["h"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")], "y",
                   {"s0": np.array([0], np.int64), "ax": np.array([1], np.int64)})
    with pytest.raises(OnnxImportError, match=r"the cut 'e' has per-example shape \(batch, \?\)"):
        import_spec(ImportOptions(_save(model, tmp_path), cut="e", num_classes=3))
