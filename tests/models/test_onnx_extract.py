"""Cutting the backbone out of a source graph (models/onnx_extract.py, onnx_prefix.py) where
onnx.utils.Extractor could not: If branches that read outer tensors by name, and graphs
thousands of nodes deep. Oracle: ONNX Runtime running the source up to the cut."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.edge_runtime.model_runtime import ModelRuntime  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from fedge.models.onnx_probe import run_to  # noqa: E402

RNG = np.random.default_rng(21)


def _model(backbone: list, inits: dict, name: str) -> onnx.ModelProto:
    """`name` (N, 4) -> backbone -> 's' (N, 4) -> MatMul + Add (3) -> Softmax."""
    nodes = [*backbone, helper.make_node("MatMul", ["s", "w1"], ["m"], name="fc1"),
             helper.make_node("Add", ["m", "b1"], ["logits"], name="fc1_bias"),
             helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1)]
    inits = {**inits, "w1": RNG.normal(size=(4, 3)).astype(np.float32), "b1": RNG.normal(size=3).astype(np.float32)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _assert_backbone_is_the_sources(model: onnx.ModelProto, name: str, tmp_path) -> None:
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert (spec.onnx_cut, spec.onnx_features) == ("s", 4)
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    (want,) = run_to(model, {name: x}, ["s"])
    np.testing.assert_allclose(ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id).embed(x), want,
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["x", "features"])
def test_an_if_branch_that_reads_outer_tensors_by_name_is_cut_out_whole(tmp_path, name):
    """The branch reads the initializer w and the input by their outer names (no input of the If):
    the backbone lost w and was refused as "not a valid ONNX model". An input named other than x is
    renamed x in the backbone, in the branch too."""
    def branch(label: str, weight: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("MatMul", [name, weight], [f"{label}_out"])], label, [],
                                 [helper.make_tensor_value_info(f"{label}_out", TensorProto.FLOAT, None)])

    backbone = [helper.make_node("If", ["cond"], ["feat"], name="branchy", then_branch=branch("then", "w"),
                                 else_branch=branch("else", "w_other")),
                helper.make_node("Sin", ["feat"], ["s"], name="sin")]
    inits = {"cond": np.array(True), "w": RNG.normal(size=(4, 4)).astype(np.float32),
             "w_other": np.zeros((4, 4), np.float32)}
    _assert_backbone_is_the_sources(_model(backbone, inits, name), name, tmp_path)


def test_a_backbone_thousands_of_nodes_deep_is_cut_out(tmp_path):
    """Extractor walked back from the cut by recursion, a Python frame a node: RecursionError."""
    chain = [helper.make_node("Sin" if i % 2 else "Cos", ["x" if i == 0 else f"t{i - 1}"], [f"t{i}"], name=f"n{i}")
             for i in range(1500)]
    chain.append(helper.make_node("Sin", ["t1499"], ["s"], name="last"))
    _assert_backbone_is_the_sources(_model(chain, {}, "x"), "x", tmp_path)


@pytest.mark.parametrize("where", ["graph", "function"])
def test_a_local_function_called_only_inside_an_if_branch_goes_with_the_backbone(tmp_path, where):
    """local:Twice is called only in an If branch (of the graph, or of another local function's
    body): the backbone was cut out without it and refused at build as "local:Twice(-1) is not a
    registered function/op", though ONNX Runtime runs the source."""
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("local", 1)]
    twice = helper.make_function("local", "Twice", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])], opsets)

    def branch(label: str, read: str) -> onnx.GraphProto:
        nodes = [helper.make_node("Twice", [read], [f"{label}_out"], domain="local")] if label == "then" else \
            [helper.make_node("Identity", [read], [f"{label}_out"])]
        return helper.make_graph(nodes, label, [], [helper.make_tensor_value_info(f"{label}_out", TensorProto.FLOAT,
                                                                                  None)])

    functions = [twice]
    if where == "graph":
        backbone = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc0"),
                    helper.make_node("If", ["cond"], ["feat"], name="branchy", then_branch=branch("then", "h"),
                                     else_branch=branch("else", "h"))]
    else:  # the If is in the body of local:Outer
        body = [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True), "c")),
                helper.make_node("If", ["c"], ["o"], then_branch=branch("then", "i"), else_branch=branch("else", "i"))]
        functions.append(helper.make_function("local", "Outer", ["i"], ["o"], body, opsets))
        backbone = [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc0"),
                    helper.make_node("Outer", ["h"], ["feat"], domain="local", name="outer")]
    backbone.append(helper.make_node("Sin", ["feat"], ["s"], name="sin"))
    model = _model(backbone, {"cond": np.array(True), "w": RNG.normal(size=(4, 4)).astype(np.float32)}, "x")
    model = helper.make_model(model.graph, opset_imports=opsets, functions=functions)
    _assert_backbone_is_the_sources(model, "x", tmp_path)
