"""NaN and Inf outside initializers (models/onnx_finite.py, onnx_source.stored_tensors): in a
Constant's value_float(s), and in float attributes (Gemm's alpha and beta, LeakyRelu's slope).
The frozen backbone's check looked at stored tensors alone, so each imported with non-finite
features for every input. A Constant's value_floats bias is read as the tail's stored bias."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from tests.models.test_onnx_import_outsider import W1, W2, _assert_export_gives_the_sources_y  # noqa: E402

B1 = np.linspace(-1, 1, 6).astype(np.float32)


def _model(first: list, act: onnx.NodeProto | None = None) -> onnx.ModelProto:
    """x (N, 12) -> `first` (writing 'h', 6 wide) -> `act` (or Relu) -> 'a' -> MatMul W2 -> y."""
    nodes = [*first, act or helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _constant_bias(values: list[float]) -> list:
    return [helper.make_node("Constant", [], ["b1"], name="bias_values", value_floats=values),
            helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
            helper.make_node("Add", ["m", "b1"], ["h"], name="fc1_bias")]


def test_a_constant_value_floats_bias_joins_the_tail(tmp_path):
    """It was no stored value, so the Add ended the layer and the cut moved past it. Oracle:
    ONNX Runtime's run of the source."""
    model = _model(_constant_bias(B1.tolist()))
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    assert spec.onnx_cut == "x" and [layer.units for layer in spec.layers] == [6]
    _assert_export_gives_the_sources_y(spec, model, tmp_path)


@pytest.mark.parametrize("case, refused", [
    ("value_floats bias Inf", r"stored tensor 'b1', read by Add node 'fc1_bias' in the frozen backbone "
                              r"\(before the cut 'a'\), holds 1 Inf"),
    ("Gemm alpha Inf", r"attribute alpha of Gemm node 'fc1' in the frozen backbone \(before the cut 'a'\) is Inf"),
    ("Gemm beta NaN", r"attribute beta of Gemm node 'fc1' in the frozen backbone \(before the cut 'a'\) is NaN"),
    ("LeakyRelu slope NaN", r"attribute alpha of LeakyRelu node 'act' in the frozen backbone \(before the cut 'a'\) "
                            "is NaN"),
    ("value_float NaN", r"attribute value_float of Constant node 'k' in the frozen backbone \(before the cut 'a'\) "
                        "is NaN"),
])
def test_a_nan_or_inf_number_before_the_cut_is_refused_by_name(tmp_path, case, refused):
    """Before the cut (given here; the automatic cut moves past a layer refused for such a number),
    where nothing looked at numbers outside initializers."""
    gemm = lambda **attrs: [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", **attrs)]  # noqa: E731
    first, act = {
        "value_floats bias Inf": (_constant_bias([*B1[:5].tolist(), np.inf]), None),
        "Gemm alpha Inf": (gemm(alpha=np.inf), None),
        "Gemm beta NaN": ([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(B1)),
                           helper.make_node("Gemm", ["x", "w1", "c"], ["h"], name="fc1", beta=np.nan)], None),
        "LeakyRelu slope NaN": (gemm(), helper.make_node("LeakyRelu", ["h"], ["a"], name="act", alpha=np.nan)),
        "value_float NaN": ([helper.make_node("Constant", [], ["k"], name="k", value_float=np.nan),
                             helper.make_node("Mul", ["x", "k"], ["xk"], name="scale"),
                             helper.make_node("Gemm", ["xk", "w1"], ["h"], name="fc1")], None),
    }[case]
    onnx.save(_model(first, act), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=refused):
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="a"))


def test_a_tail_layers_inf_bias_is_named_with_its_file(tmp_path):
    """With the cut given, the tail layer's own refusal is the error: it named the node, not the file."""
    onnx.save(_model(_constant_bias([*B1[:5].tolist(), np.inf])), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError) as raised:
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="x"))
    assert str(raised.value).startswith(f"{tmp_path / 'm.onnx'}: fc1: its bias holds 1 NaN or Inf value(s)")
