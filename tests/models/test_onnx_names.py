"""Names an imported ONNX file uses more than once (models/onnx_scope.refuse_rewritten): a tensor
written twice is refused by name; an initializer stored twice is read as ONNX Runtime reads it
(the last one), checked against ONNX Runtime's run of the source."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from tests.models.test_onnx_import_outsider import W1, W2, _assert_export_gives_the_sources_y  # noqa: E402


def _model(nodes, inits: list[tuple[str, np.ndarray]]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _branch(writes_twice: bool) -> onnx.GraphProto:
    nodes = [helper.make_node("Sin", ["x"], ["t"], name="sin"),
             helper.make_node("Cos", ["x" if writes_twice else "t"], ["t" if writes_twice else "u"], name="cos")]
    out = "t" if writes_twice else "u"
    return helper.make_graph(nodes, "branch", [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


@pytest.mark.parametrize("case, written", [
    ("relu in place", r"tensor 'h' is written by Gemm node 'fc1' and by Relu node 'relu1'"),
    ("over the input", r"tensor 'x' is written by graph input and by Sin node 'sin'"),
    ("over an initializer", r"tensor 'w2' is written by graph initializer and by Relu node 'relu1'"),
    ("in an If branch", r"tensor 't' is written by Sin node 'sin' and by Cos node 'cos'"),
])
def test_a_tensor_written_twice_is_refused_by_name(tmp_path, case, written):
    """Relu(h) -> h was read as if the Relu were the only writer: "tensor 'h' feeds Relu, MatMul"."""
    first = {"relu in place": [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
                               helper.make_node("Relu", ["h"], ["h"], name="relu1")],
             "over the input": [helper.make_node("Sin", ["x"], ["x"], name="sin"),
                                helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
                                helper.make_node("Relu", ["h"], ["h2"], name="relu1")],
             "over an initializer": [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
                                     helper.make_node("Relu", ["h"], ["w2"], name="relu1")],
             "in an If branch": [helper.make_node("If", ["cond"], ["b"], name="branchy", then_branch=_branch(True),
                                                  else_branch=_branch(False)),
                                 helper.make_node("Gemm", ["b", "w1"], ["h"], name="fc1")]}[case]
    last = "w2" if case == "over an initializer" else ("h" if case != "over the input" else "h2")
    nodes = [*first, helper.make_node("Gemm", [last, "w2"], ["y"], name="out")]
    inits = [("w1", W1), ("w2", W2), ("cond", np.array(True))]
    onnx.save(_model(nodes, inits), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=rf"{written}; an ONNX graph names each value once"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def test_an_initializer_stored_twice_is_read_as_onnx_runtime_reads_it(tmp_path):
    """ONNX Runtime takes the last of the two (it warns); the import's head must be that one."""
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Gemm", ["a", "w2"], ["y"], name="out")]
    model = _model(nodes, [("w1", W1), ("w2", np.zeros_like(W2)), ("w2", W2)])
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    _assert_export_gives_the_sources_y(spec, model, tmp_path)


@pytest.mark.parametrize("op", ["Constant", "Sin"])
def test_a_node_that_writes_no_tensor_is_refused_by_name(tmp_path, op):
    """A Constant with no output was an IndexError in the reading of stored values (a traceback)."""
    idle = helper.make_node(op, [] if op == "Constant" else ["x"], [], name="idle",
                            **({"value": numpy_helper.from_array(np.ones(3, np.float32))} if op == "Constant" else {}))
    nodes = [idle, helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"), helper.make_node("Gemm", ["a", "w2"], ["y"])]
    onnx.save(_model(nodes, [("w1", W1), ("w2", W2)]), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=rf"{op} node 'idle' of graph 'g' writes no tensor"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


@pytest.mark.parametrize("cycle, named", [
    ([helper.make_node("MatMul", ["c", "wc"], ["d"], name="loop_mm"), helper.make_node("Relu", ["d"], ["c"],
                                                                                     name="loop_relu")],
     "MatMul node 'loop_mm', Relu node 'loop_relu'"),
    ([helper.make_node("Identity", ["p"], ["q"], name="i1"), helper.make_node("Identity", ["q"], ["p"], name="i2"),
      helper.make_node("Add", ["x", "p"], ["x2"], name="waits")], "Identity node 'i1', Identity node 'i2'"),
])
def test_a_cycle_is_refused_by_name(tmp_path, cycle, named):
    """The tail's walk went round a cycle of dense layers forever, growing the tail (the import
    never ended), and a cycle of Identities before the cut imported. Only the nodes on the cycle
    are named, not those that wait on it."""
    reads = "x2" if any(n.name == "waits" for n in cycle) else "x"
    nodes = [*cycle, helper.make_node("Gemm", [reads, "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"), helper.make_node("Gemm", ["a", "w2"], ["y"])]
    onnx.save(_model(nodes, [("w1", W1), ("w2", W2), ("wc", np.eye(12, dtype=np.float32))]), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=rf"the graph 'g' has a cycle through {named}: an ONNX graph computes "
                                              "each node once"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))
