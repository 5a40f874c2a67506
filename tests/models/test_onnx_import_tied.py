"""Tied weights (the BYOM red team, 2026-12-07): a source whose tail layers read one weight
matrix (torch `fc2.weight = fc1.weight`, one initializer used twice, or a layer reading the
other's transpose) imports as independent fedge layers that drift apart once trained; the
import now says so by name. It still imports: until training the model computes what the source
does (the oracle: ONNX Runtime running the source)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from tests.models.test_onnx_import_outsider import _assert_export_gives_the_sources_y  # noqa: E402

RNG = np.random.default_rng(4)
W = RNG.normal(size=(12, 12)).astype(np.float32)
WIDE = RNG.normal(size=(12, 8)).astype(np.float32)


def _tail(fc2_weight: str, trans_b: int, inits: dict) -> onnx.ModelProto:
    """x (N, 12) -> Gemm fc1 (weight w1) -> Relu -> Gemm fc2 (fc2_weight, transB) -> y."""
    node = helper.make_node
    nodes = [node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"), node("Relu", ["h"], ["a"]),
             node("Gemm", ["a", fc2_weight, "b2"], ["y"], name="fc2", transB=trans_b)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


B12 = np.zeros(12, np.float32) + 0.1
B8 = np.zeros(8, np.float32) + 0.2
CASES = {
    "one-initializer-twice": (_tail("w1", 0, {"w1": W, "b1": B12, "b2": B12}), True),
    "transposed": (_tail("w1", 1, {"w1": WIDE, "b1": B8, "b2": B12}), True),
    "equal-copies": (_tail("w2", 0, {"w1": W, "w2": W.copy(), "b1": B12, "b2": B12}), True),
    "untied": (_tail("w2", 0, {"w1": W, "w2": W[::-1].copy(), "b1": B12, "b2": B12}), False),
    "constant-matrices": (_tail("w2", 0, {"w1": np.full((12, 12), 0.5, np.float32),
                                          "w2": np.full((12, 12), 0.5, np.float32), "b1": B12, "b2": B12}), False),
}


@pytest.mark.parametrize("case", CASES)
def test_tied_tail_layers_are_named_and_still_import(tmp_path, caplog, case):
    model, tied = CASES[case]
    onnx.save(model, tmp_path / "m.onnx")
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    assert len(spec.layers) == 1 and spec.onnx_cut == "x"  # fc1 hidden, fc2 the classifier: both train
    said = "'fc1' and 'fc2' share their weights in the source (tied)" in caplog.text
    assert said == tied
    _assert_export_gives_the_sources_y(spec, model, tmp_path)  # as imported, through export, to 1e-5


@pytest.mark.parametrize("classes", [0, 3])
@pytest.mark.parametrize("tied", [True, False])
def test_a_tail_layer_tied_to_a_frozen_backbone_layer_is_named(tmp_path, caplog, tied, classes):
    """One matrix read before the cut (its layer frozen by the Elu after it) and after it: the
    notice named the backbone's layer frozen, and nothing said the tail's copy was tied to it."""
    node = helper.make_node
    nodes = [node("Gemm", ["x", "w", "b1"], ["h"], name="frozen"), node("Elu", ["h"], ["e"]),
             node("Gemm", ["e", "w1", "b1"], ["t"], name="fc1"), node("Relu", ["t"], ["a"]),
             node("Gemm", ["a", "w2", "b2"], ["y"], name="out")]
    inits = {"w": W, "w1": W if tied else W[::-1].copy(), "b1": B12, "w2": WIDE, "b2": B8}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, tmp_path / "m.onnx")
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global", num_classes=classes))
    assert (len(spec.layers), spec.onnx_cut) == (1, "e")
    said = "share their weights in the source (tied): 'fc1' and Gemm 'frozen'; fedge trains the tail's copy" \
        in caplog.text
    assert said == tied
    if not classes:
        _assert_export_gives_the_sources_y(spec, model, tmp_path)
