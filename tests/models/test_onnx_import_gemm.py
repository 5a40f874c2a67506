"""Gemm tail layers in every form the ONNX spec allows: alpha, beta, transB and the shapes of C
are folded into fedge's y = x @ W + b exactly (oracle: ONNX Runtime running the source), and
the forms that are no dense layer (transA = 1, a C that is not one bias per output) are refused
by name."""

from __future__ import annotations

import re

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from tests.models.test_onnx_import_outsider import W1, W2, _assert_export_gives_the_sources_y  # noqa: E402

RNG = np.random.default_rng(11)


def _gemms(c1: np.ndarray | None, **attrs) -> onnx.ModelProto:
    """x (N, 12) -> Gemm(attrs, C = c1) 6 -> Relu -> Gemm(alpha=-0.5, beta=2) 4 -> y."""
    w1 = W1.T.copy() if attrs.get("transB") else W1
    nodes = [helper.make_node("Gemm", ["x", "w1", *(["c1"] if c1 is not None else [])], ["h"], name="fc1", **attrs),
             helper.make_node("Relu", ["h"], ["a"], name="relu1"),
             helper.make_node("Gemm", ["a", "w2", "c2"], ["y"], name="out", alpha=-0.5, beta=2.0)]
    inits = {"w1": w1, "w2": W2, "c2": RNG.normal(size=(1, 4)).astype(np.float32),
             **({"c1": c1} if c1 is not None else {})}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("c1, attrs", [
    (RNG.normal(size=6).astype(np.float32), {"alpha": 0.3, "beta": -2.0, "transB": 1}),
    (RNG.normal(size=(1, 6)).astype(np.float32), {"alpha": -1.5, "beta": 0.5}),
    (np.array(0.7, np.float32), {"alpha": 2.0, "beta": 3.0, "transB": 1}),  # one number for every output
    (None, {"alpha": 0.25}),  # no C at all
], ids=["vector-C-transB", "row-C", "scalar-C", "no-C"])
def test_alpha_beta_transb_and_c_are_folded_as_onnx_runtime_computes(tmp_path, c1, attrs):
    model = _gemms(c1, **attrs)
    onnx.save(model, tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    assert spec.onnx_cut == "x" and [layer.units for layer in spec.layers] == [6]
    _assert_export_gives_the_sources_y(spec, model, tmp_path)


@pytest.mark.parametrize("c1, shape", [(RNG.normal(size=(6, 1)).astype(np.float32), r"\(6, 1\)"),
                                       (RNG.normal(size=(2, 6)).astype(np.float32), r"\(2, 6\)")])
def test_a_c_that_is_not_one_bias_per_output_is_refused_by_name(tmp_path, c1, shape):
    """C of (6, 1) or (2, 6) broadcasts only at a batch of 6 or 2, a bias per example, not per
    output: it was numpy's ValueError, a traceback."""
    onnx.save(_gemms(c1), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=rf"Gemm node 'fc1': bias of shape {shape} for 6 outputs; a dense layer "
                                              "has one bias per output"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="x"))
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))  # the automatic cut moves past it, into the
    with pytest.raises(OnnxImportError, match="the backbone fails on a batch of 3"):  # backbone: ORT names it
        build_artifacts(spec, tmp_path / "art", ort_training=False)


def test_a_transposed_input_is_refused_by_name(tmp_path):
    onnx.save(_gemms(None, transA=1), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=r"Gemm node 'fc1': transA=1 \(a transposed input\) is not supported"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), cut="x"))


@pytest.mark.parametrize("c1, attrs, why", [
    (RNG.normal(size=(6, 1)).astype(np.float32), {}, r"bias of shape \(6, 1\) for 6 outputs"),
    (None, {"transA": 1}, r"transA=1 \(a transposed input\) is not supported"),
], ids=["C-per-example", "transA"])
def test_the_frozen_notice_gives_the_layers_own_refusal_not_the_relu(tmp_path, caplog, c1, attrs, why):
    """The automatic cut moves past a Gemm refused as a tail layer, and the notice blamed the
    Relu after it ("Relu, which is not one Relu, ... it can train through"): it names the refusal."""
    onnx.save(_gemms(c1, **attrs), tmp_path / "m.onnx")
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert spec.onnx_cut == "a"
    assert re.search(r"1 dense layer\(s\) stay frozen in the backbone \(Gemm 'fc1'\): the trainable tail starts "
                     rf"after Relu: it cannot start at Gemm node 'fc1': {why}", caplog.text)
    assert "it can train through" not in caplog.text
