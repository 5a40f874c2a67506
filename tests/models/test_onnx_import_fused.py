"""Models as ONNX Runtime's optimizer saves them (SessionOptions.optimized_model_filepath at
ORT_ENABLE_EXTENDED): each Gemm -> activation becomes one com.microsoft FusedGemm, read as that
Gemm and activation (models/onnx_gemm.py). Oracle: ONNX Runtime's run of the optimized file."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.export import export_model  # noqa: E402
from fedge.models.onnx_check import check_import  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec, pretrained_values  # noqa: E402
from fedge.models.onnx_probe import run_to  # noqa: E402
from fedge.models.onnx_source import OnnxImportError  # noqa: E402
from tests.models.import_check import _digits_images  # noqa: E402
from tests.models.test_import_torch_variants import _build_check_and_export, _randomized  # noqa: E402
from tests.torch_export import export  # noqa: E402

nn = torch.nn


def _optimized(tmp_path, layers, x, opset: int = 17) -> str:
    torch.manual_seed(0)
    export(torch, _randomized(nn.Sequential(*layers)), torch.from_numpy(x[:2]), tmp_path / "source.onnx", opset)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "source.onnx"), options, providers=["CPUExecutionProvider"])
    return tmp_path / "optimized.onnx"


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
@pytest.mark.parametrize("layers, opset, fused, hidden, cut", [
    # at opset 16 and above ONNX Runtime (1.19) fuses no LeakyRelu: 13 reads activation_alpha
    (lambda: (nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.LeakyReLU(0.2), nn.Linear(16, 10)), 13,
     ["Relu", "LeakyRelu", ""], [("relu", 0.01), ("leaky_relu", 0.2)], "input"),
    # a BatchNorm1d after the fused ReLU is not the Gemm's to fold: the layer stays frozen before it
    (lambda: (nn.Linear(64, 32), nn.ReLU(), nn.BatchNorm1d(32), nn.Linear(32, 10)), 17, ["Relu", ""], [],
     "/2/BatchNormalization_output_0"),
], ids=["relu-leaky", "batchnorm-after"])
def test_a_fused_gemm_is_read_as_its_gemm_and_activation(tmp_path, layers, opset, fused, hidden, cut):
    """The fused layers stayed frozen in the backbone with no notice (the notice names dense
    layers, and a FusedGemm was none): the MLP trained its classifier alone."""
    x, y = _digits_images(64)
    x = x.reshape(len(x), -1)
    path = _optimized(tmp_path, layers(), x, opset)
    gemms = [n for n in onnx.load(path).graph.node if n.op_type in ("Gemm", "FusedGemm")]
    assert [next((a.s.decode() for a in n.attribute if a.name == "activation"), "") for n in gemms] == fused
    spec = import_spec(ImportOptions(str(path), head="global"))
    assert ([(layer.activation, layer.negative_slope) for layer in spec.layers], spec.onnx_cut) == (hidden, cut)
    _build_check_and_export(path, x, y, False, "logits")


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
def test_a_binary_classifier_whose_sigmoid_is_fused_keeps_its_two_class_head(tmp_path):
    """Linear(16, 1) -> Sigmoid optimized is one FusedGemm(activation Sigmoid): read as a hidden
    sigmoid on the classifier, it was refused as 'gives one value and no Sigmoid follows it'. It is
    the binary classifier [0, z] as the unfused one is: the head's class-1 probability is p."""
    x, y = _digits_images(64)
    x = x.reshape(len(x), -1)
    path = _optimized(tmp_path, (nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 1), nn.Sigmoid()), x)
    assert [n.op_type for n in onnx.load(path).graph.node] == ["FusedGemm", "FusedGemm"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def source(p, xs, fixed):
        probability = sess.run(None, {"input": xs})[0]
        return np.concatenate([1 - probability, probability], axis=1)

    _build_check_and_export(path, x, y % 2, False, "probs", source)


def _fused_then_gemm(tmp_path, **attrs) -> str:
    """inp (N, 4) -> FusedGemm 'fc1' (attrs) -> Gemm 'fc2' (3 classes)."""
    rng = np.random.default_rng(0)
    inits = {"W1": rng.normal(size=(4, 6)), "b1": rng.normal(size=6), "W2": rng.normal(size=(6, 3)), "b2": np.zeros(3)}
    nodes = [helper.make_node("FusedGemm", ["inp", "W1", "b1"], ["h"], domain="com.microsoft", name="fc1", **attrs),
             helper.make_node("Gemm", ["h", "W2", "b2"], ["out"], name="fc2")]
    return _saved(tmp_path / "fused.onnx", nodes, inits, ("out", 3))


def _saved(path, nodes, inits: dict, output: tuple[str, int]) -> str:
    """The graph inp (N, 4) -> nodes -> output (name, width), saved at opset 13 with com.microsoft."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info(output[0], TensorProto.FLOAT, [None, output[1]])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, path)
    return str(path)


@pytest.mark.parametrize("attrs, why", [
    ({"activation": "HardSigmoid", "activation_alpha": 0.2, "activation_beta": 0.5},
     "fused Gemm with activation 'HardSigmoid'"),
    # the slope was told "activation 'LeakyRelu'; the tail trains ... LeakyRelu ... only"
    ({"activation": "LeakyRelu", "activation_alpha": 1.5}, "fused Gemm with LeakyRelu of slope 1.5; the tail's "
     "leaky_relu takes a slope in [0, 1]"),
    ({"activation": "LeakyRelu", "activation_alpha": -0.1}, "LeakyRelu of slope -0.1; the tail's leaky_relu"),
], ids=["hardsigmoid", "slope-above-1", "slope-below-0"])
def test_a_fused_gemm_with_an_activation_the_tail_cannot_train_is_named_frozen(tmp_path, caplog, attrs, why):
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(_fused_then_gemm(tmp_path, **attrs), head="global"))
    assert (spec.onnx_cut, spec.layers) == ("h", ())
    assert "1 dense layer(s) stay frozen in the backbone (FusedGemm 'fc1')" in caplog.text
    assert why in caplog.text and ("the tail trains" in caplog.text) == ("HardSigmoid" in why)


@pytest.mark.parametrize("alpha, kind", [("abc", "STRING"), ([0.1, 0.2], "FLOATS")], ids=["string", "list"])
def test_a_fused_gemm_attribute_of_the_wrong_type_is_refused_naming_the_node(tmp_path, alpha, kind):
    """No schema checks com.microsoft's attributes on load: activation_alpha "abc" or a list was a
    raw ValueError out of the cut search. Oracle: ONNX Runtime refuses the same file."""
    path = _fused_then_gemm(tmp_path, activation="LeakyRelu", activation_alpha=alpha)
    with pytest.raises(Exception, match="INVALID_GRAPH"):
        ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with pytest.raises(OnnxImportError, match=f"FusedGemm node 'fc1': its activation_alpha is {kind}, not one FLOAT"):
        import_spec(ImportOptions(path, head="global"))


@pytest.mark.parametrize("cut", ["auto", "h"], ids=["auto-cut", "cut-after-it"])
def test_a_fused_gemm_whose_activation_is_not_utf8_is_refused_naming_the_node(tmp_path, cut):
    """A review's repro: activation b"\\xff" passed the type check and raised a raw
    UnicodeDecodeError from the cut search (or, with the cut after it, from the backbone's unfuse)."""
    path = _fused_then_gemm(tmp_path, activation=b"\xff")
    with pytest.raises(OnnxImportError) as caught:
        import_spec(ImportOptions(path, head="global", cut=cut))
    assert "FusedGemm node 'fc1': its activation b'\\xff' is not UTF-8" in str(caught.value)


def test_a_model_with_ort_s_cpu_specific_nchwc_ops_is_refused_naming_them(tmp_path):
    """ORT_ENABLE_ALL writes convolutions as com.microsoft.nchwc ops for the saving CPU's vector
    width: the backbone imported and built on that machine, and the devices run it on others."""
    rng = np.random.default_rng(0)
    inits = {"W": rng.normal(size=(2, 1, 3, 3)), "Wfc": rng.normal(size=(32, 3)), "b": np.zeros(3)}
    nodes = [helper.make_node("ReorderInput", ["inp"], ["blocked"], domain="com.microsoft.nchwc", name="reorder"),
             helper.make_node("Conv", ["blocked", "W"], ["c"], domain="com.microsoft.nchwc", name="conv",
                              activation="Relu", kernel_shape=[3, 3]),
             helper.make_node("ReorderOutput", ["c"], ["plain"], domain="com.microsoft.nchwc", channels=2),
             helper.make_node("Flatten", ["plain"], ["f"]), helper.make_node("Gemm", ["f", "Wfc", "b"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [None, 1, 6, 6])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 3])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft.nchwc", 1)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "nchwc.onnx")
    with pytest.raises(OnnxImportError, match="ReorderInput node 'reorder' and 2 more are com.microsoft.nchwc ops"):
        import_spec(ImportOptions(str(tmp_path / "nchwc.onnx"), head="global"))


def test_the_whole_model_check_sees_an_error_in_a_fused_sigmoids_logit(tmp_path):
    """The check compared a FusedGemm(Sigmoid)'s p with atol 1e-4: an error of 0.05 in z passed
    once |z| > 5.5 (p(1 - p) < 4.1e-3 there: 0.05 x 4.1e-3 is about 2e-4, near the 1e-4 tolerance).
    It compares logit(p) now where p resolves it. Here z = 7.5 + x @ w, with |x @ w| under 1.5 for
    the check's standard-normal inputs and |w| <= 0.1 but for rare draws: p about (0.9975, 0.9999)."""
    rng = np.random.default_rng(1)
    inits = {"w": rng.uniform(-0.1, 0.1, size=(4, 1)), "b": np.array([7.5])}
    node = helper.make_node("FusedGemm", ["inp", "w", "b"], ["p"], domain="com.microsoft", name="out",
                            activation="Sigmoid")
    spec = import_spec(ImportOptions(_saved(tmp_path / "saturated.onnx", [node], inits, ("p", 1)), head="global"))
    values = pretrained_values(spec)
    check_import(spec, values, None)  # read right: no false alarm
    values["head_global.bias"] = values["head_global.bias"] + np.array([0.0, 0.05], np.float32)
    with pytest.raises(OnnxImportError, match="does not compute what the source does at 'p'"):
        check_import(spec, values, None)


@pytest.mark.parametrize("attrs", [{"activation": "HardSigmoid", "activation_alpha": 0.3, "activation_beta": 0.4},
                                   {"activation": "LeakyRelu", "activation_alpha": 1.5},
                                   {"activation": "Relu", "alpha": 0.5, "beta": 2.0}],
                         ids=["hardsigmoid", "leaky-slope-1.5", "relu-gemm-attributes"])
def test_a_frozen_fused_gemm_is_exported_as_standard_onnx(tmp_path, attrs):
    """A FusedGemm left in the backbone kept the export on com.microsoft ops (and all of ORT's opset
    imports), which a runtime without ONNX Runtime's contrib ops cannot run, though export.py says
    stock onnxruntime runs it. It is Gemm -> the activation op now. Oracle: ONNX Runtime's run of
    the source (with its FusedGemm) up to the cut."""
    path = _fused_then_gemm(tmp_path, **attrs)
    spec = import_spec(ImportOptions(path, head="global", cut="h"))  # Relu: one the tail would read
    art = tmp_path / "art"
    manifest = build_artifacts(spec, art)
    backbone = onnx.load(art / "backbone.onnx")
    assert {n.domain for n in backbone.graph.node} == {""}, [(n.op_type, n.domain) for n in backbone.graph.node]
    assert [o.domain for o in backbone.opset_import] == [""]
    x = np.random.default_rng(2).standard_normal((5, 4)).astype(np.float32)
    (want,) = run_to(onnx.load(path), {"inp": x}, ["h"])
    got = ort.InferenceSession(str(art / "backbone.onnx"), providers=["CPUExecutionProvider"]).run(["z"], {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    exported = export_model(art, ModelRuntime(art, expected_model_id=manifest.model_id).initial("shared"), {})
    assert {n.domain for n in exported.graph.node} == {""} and [o.domain for o in exported.opset_import] == [""]


def test_a_single_nchwc_op_is_named_in_the_singular(tmp_path):
    """One nchwc op was "ReorderInput node 'reorder' and 0 more are com.microsoft.nchwc ops"."""
    node = helper.make_node("ReorderInput", ["inp"], ["h"], domain="com.microsoft.nchwc", name="reorder")
    path = _saved(tmp_path / "one.onnx", [node, helper.make_node("Gemm", ["h", "W", "b"], ["out"])],
                  {"W": np.ones((4, 3)), "b": np.zeros(3)}, ("out", 3))
    with pytest.raises(OnnxImportError, match="ReorderInput node 'reorder' is a com.microsoft.nchwc op, which ONNX"):
        import_spec(ImportOptions(path, head="global"))
