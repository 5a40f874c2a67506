"""A binary classifier that gives its decision beside its probability p (models/onnx_head.py):
only the decision p > 0.5 is the argmax of fedge's two-class head [0, z], so only it is dropped
as post-processing. Oracles: ONNX Runtime's run of the source (its decision output) and the
head's argmax computed in numpy from the imported weights."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, import_spec, pretrained_values  # noqa: E402
from fedge.models.onnx_source import OnnxImportError  # noqa: E402

RNG = np.random.default_rng(3)
X = RNG.normal(size=(64, 8)).astype(np.float32)
INITS = {"W1": RNG.normal(size=(8, 4)), "b1": RNG.normal(size=4), "W2": RNG.normal(size=(4, 1)), "b2": [0.1],
         "t": np.float32(0.5)}


def _thresholded(tmp_path, op: str, p_first: bool, fused: bool = False) -> str:
    """x (N, 8) -> Gemm 4 -> Relu -> Gemm 1 -> Sigmoid (fused: one FusedGemm) = p; outputs p and
    Cast(op(p, 0.5)) (p_first) or Cast(op(0.5, p))."""
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h0"], name="fc1"), helper.make_node("Relu", ["h0"], ["h"])]
    if fused:
        nodes.append(helper.make_node("FusedGemm", ["h", "W2", "b2"], ["p"], domain="com.microsoft", name="out",
                                      activation="Sigmoid"))
    else:
        nodes += [helper.make_node("Gemm", ["h", "W2", "b2"], ["z"], name="out"),
                  helper.make_node("Sigmoid", ["z"], ["p"])]
    nodes += [helper.make_node(op, ["p", "t"] if p_first else ["t", "p"], ["d"], name="decide"),
              helper.make_node("Cast", ["d"], ["decision"], to=TensorProto.INT64)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1]),
                               helper.make_tensor_value_info("decision", TensorProto.INT64, ["N", 1])],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in INITS.items()])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if fused else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    path = str(tmp_path / f"{op}-{p_first}-{fused}.onnx")
    onnx.save(model, path)
    return path


def _source_decision(path: str) -> np.ndarray:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(["decision"], {"x": X})[0].reshape(-1)


def _head_prediction(path: str) -> np.ndarray:
    spec = import_spec(ImportOptions(path, head="global"))
    v = pretrained_values(spec)
    h = np.maximum(X @ v["fc1.weight"] + v["fc1.bias"], 0)
    return (h @ v["head_global.weight"] + v["head_global.bias"]).argmax(axis=1)


@pytest.mark.parametrize("op, p_first", [("Greater", True), ("Less", False), ("GreaterOrEqual", True),
                                         ("LessOrEqual", False)])
@pytest.mark.parametrize("fused", [False, True], ids=["sigmoid", "fused-sigmoid"])
def test_a_decision_p_greater_than_a_half_is_the_heads_argmax(tmp_path, op, p_first, fused):
    """Greater(p, 0.5) and Less(0.5, p) import, and so do p >= 0.5 (torch's `sigmoid(z) >= 0.5`: the
    argmax but at the exact tie; a review found it refused). The fused form, ONNX Runtime's
    FusedGemm(Sigmoid), was refused ("Greater node 'decide' ... not prediction post-processing")
    while the unfused imported."""
    path = _thresholded(tmp_path, op, p_first, fused)
    decision = _source_decision(path)
    assert 0 < decision.sum() < len(decision)  # both classes decided: the check can see a flip
    np.testing.assert_array_equal(_head_prediction(path), decision)


@pytest.mark.parametrize("op, p_first, rule", [
    ("Less", True, "p < 0.5"), ("Greater", False, "p < 0.5"), ("LessOrEqual", True, "p <= 0.5"),
    ("GreaterOrEqual", False, "p <= 0.5")])
def test_a_decision_that_flips_the_labels_is_refused_by_name(tmp_path, op, p_first, rule):
    """Every comparison with 0.5, either operand order, imported: Less(p, 0.5) kept a head whose
    class 1 is the source's decision 0, the labels flipped silently."""
    path = _thresholded(tmp_path, op, p_first)
    kept = _head_prediction(_thresholded(tmp_path, "Greater", True))  # the oracle: the head's argmax flipped
    np.testing.assert_array_equal(_source_decision(path), 1 - kept)
    with pytest.raises(OnnxImportError) as caught:
        import_spec(ImportOptions(path, head="global"))
    assert f"{op} node 'decide' decides {rule} on the probability p of binary classifier 'out'" in str(caught.value)
    assert "be flipped" in str(caught.value)
