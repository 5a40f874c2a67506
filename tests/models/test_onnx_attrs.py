"""Attributes of another type than their op's schema says (models/onnx_attrs.py): refused by
name at load, where the importer's reading of them (Gemm's alpha, LeakyRelu's slope) was
numpy's ValueError, a traceback. Ops of a domain onnx does not know are left as they are."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from tests.models.test_onnx_import_outsider import W1, W2  # noqa: E402


def _save(path, node_attrs: dict, domain_node: onnx.NodeProto | None = None) -> None:
    """x (N, 12) -> [domain_node] -> Gemm (6) -> LeakyRelu -> MatMul (4) -> Softmax; node_attrs:
    node name -> {attribute: value} set on it, of whatever type the value makes."""
    nodes = [*([domain_node] if domain_node else []),
             helper.make_node("Gemm", ["x1" if domain_node else "x", "w1"], ["h"], name="fc1"),
             helper.make_node("LeakyRelu", ["h"], ["a"], name="act1"),
             helper.make_node("MatMul", ["a", "w2"], ["logits"], name="out"),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1)]
    for node in nodes:
        for name, value in node_attrs.get(node.name, {}).items():
            node.attribute.append(helper.make_attribute(name, value))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")])
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)


@pytest.mark.parametrize("node, attr, value, got, want", [
    ("fc1", "alpha", "abc", "STRING", "FLOAT"),
    ("fc1", "alpha", [1.0, 2.0], "FLOATS", "FLOAT"),
    ("fc1", "transB", [1, 1], "INTS", "INT"),
    ("act1", "alpha", "x", "STRING", "FLOAT"),
    ("softmax", "axis", "one", "STRING", "INT"),
])
def test_an_attribute_of_another_type_is_refused_by_name(tmp_path, node, attr, value, got, want):
    _save(tmp_path / "m.onnx", {node: {attr: value}})
    with pytest.raises(OnnxImportError, match=rf"node '{node}': attribute {attr} is {got}, but \w+ takes {want}"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def test_attributes_of_the_schemas_types_and_unknown_domains_import(tmp_path):
    """Oracle for the check itself: the same graph with right types, and a node of a domain onnx
    has no schema for (with a string attribute, before the cut), imports."""
    custom = helper.make_node("Mystery", ["x"], ["x1"], domain="com.example", name="custom", mode="fast")
    _save(tmp_path / "m.onnx", {"fc1": {"alpha": 0.5, "transB": 0}, "act1": {"alpha": 0.1}}, custom)
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="x1", input_shape=(12,)))
    assert [(layer.units, layer.activation, layer.negative_slope) for layer in spec.layers] == [(6, "leaky_relu", 0.1)]
