"""Stored tensors whose data does not fit their shape or type (onnx_source._refuse_unreadable):
refused by name at load, naming the tensor, where reading them was numpy's ValueError or a
KeyError, a traceback."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from tests.models.test_onnx_import_outsider import W1, W2  # noqa: E402


def _save(path, w1: onnx.TensorProto, as_constant: bool = False) -> None:
    """x (N, 12) -> MatMul w1 (an initializer, or a Constant's value) -> Relu -> MatMul W2."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"), helper.make_node("MatMul", ["a", "w2"], ["y"])]
    if as_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["w1"], name="w1_const", value=w1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [*([] if as_constant else [w1]), numpy_helper.from_array(W2, "w2")])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())


def _short_raw(t):
    t.raw_data = t.raw_data[:12]


def _short_float_data(t):
    t.ClearField("raw_data")
    t.float_data.extend([1.0, 2.0])


def _negative_dims(t):
    del t.dims[:]
    t.dims.extend([-1])
    t.raw_data = t.raw_data[:4]


def _unknown_type(t):
    t.data_type = 999


@pytest.mark.parametrize("as_constant", [False, True], ids=["initializer", "constant"])
@pytest.mark.parametrize("break_it, why", [(_short_raw, "ValueError: cannot reshape array of size 3"),
                                           (_short_float_data, "ValueError: cannot reshape array of size 2"),
                                           (_negative_dims, "ValueError: a negative dimension"),
                                           (_unknown_type, "KeyError: 999")])
def test_a_tensor_whose_data_does_not_fit_is_refused_by_name(tmp_path, break_it, why, as_constant):
    w1 = numpy_helper.from_array(W1, "w1")
    break_it(w1)
    _save(tmp_path / "m.onnx", w1, as_constant)
    with pytest.raises(OnnxImportError, match=rf"stored tensor 'w1' of shape \(.*\) \(data type \d+\) cannot be read: "
                                              rf"{why}.*; the file is broken"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def test_a_float16_weight_reads_as_its_values(tmp_path):
    """The oracle side: another type, whole, imports with its values as the layer's."""
    from fedge.models.onnx_import import pretrained_values

    _save(tmp_path / "m.onnx", numpy_helper.from_array(W1.astype(np.float16), "w1"))
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    np.testing.assert_array_equal(pretrained_values(spec)["fc1.weight"], W1.astype(np.float16).astype(np.float32))
