"""Identity and Cast where a graph's writer put them (a red-team probe of ~90 torch, skl2onnx
and hand-written graphs: benchmarks/results/2026-12-07-byom-redteam): a weight read through an
Identity of an initializer (deduplicated weights) or a Cast of a float16 or double initializer
to float32 is a stored weight, and a Cast of float32 values to float32 between two layers is no
op. Each froze the layer before it in the backbone (the weight ones with no notice at all);
each now trains. A batch-1 Reshape whose shape comes through an Identity is rewritten as a
stored one is (the build refused it). Oracles: ONNX Runtime running the source (as imported, and the exported model),
and the float64 numpy reference for training (import_check)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, import_spec  # noqa: E402
from tests.models.import_check import HAVE_ORT_TRAINING, check_backends_agree  # noqa: E402
from tests.models.test_onnx_import_outsider import W1, W2, _assert_export_gives_the_sources_y  # noqa: E402

RNG = np.random.default_rng(21)
B1, B2 = RNG.normal(size=6).astype(np.float32), RNG.normal(size=4).astype(np.float32)
node = helper.make_node


def _mlp(before_fc1: list, fc1_weight: str, between: list, extra: dict) -> onnx.ModelProto:
    """x (N, 12) -> [before_fc1] Gemm fc1 (weight fc1_weight) 6 -> Relu 'a' -> [between: a -> 'a2'] -> Gemm 4 -> y."""
    nodes = [*before_fc1, node("Gemm", ["x", fc1_weight, "b1"], ["h"], name="fc1"), node("Relu", ["h"], ["a"]),
             *between, node("Gemm", ["a2" if between else "a", "w2", "b2"], ["y"], name="fc2")]
    inits = {"w1": W1, "b1": B1, "w2": W2, "b2": B2, **extra}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _imports_whole_and_trains(model: onnx.ModelProto, tmp_path, caplog) -> None:
    onnx.save(model, tmp_path / "m.onnx")
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global"))
    assert (spec.onnx_cut, [(s.units, s.activation) for s in spec.layers]) == ("x", [(6, "relu")])
    assert "stay frozen" not in caplog.text
    _assert_export_gives_the_sources_y(spec, model, tmp_path)  # as imported, through export, to 1e-5
    build_artifacts(spec, tmp_path / "trained", ort_training=HAVE_ORT_TRAINING)
    x = RNG.normal(size=(48, 12)).astype(np.float32)
    check_backends_agree(tmp_path / "trained", x, RNG.integers(0, 4, len(x)))


@pytest.mark.parametrize("before_fc1, extra", [
    ([node("Identity", ["w1"], ["w1_shared"])], {}),
    ([node("Cast", ["w1_half"], ["w1_shared"], to=TensorProto.FLOAT)], {"w1_half": W1.astype(np.float16)}),
    ([node("Cast", ["w1_double"], ["w1_shared"], to=TensorProto.FLOAT)], {"w1_double": W1.astype(np.float64) / 3}),
], ids=["identity", "cast-from-float16", "cast-from-double"])
def test_a_weight_through_an_identity_or_a_cast_to_float_is_stored(tmp_path, caplog, before_fc1, extra):
    """Gemm(x, Identity(w1)) was a 'computed' weight: the automatic cut moved after it and the
    layer stayed frozen, and no notice said so (it names only layers with stored weights)."""
    _imports_whole_and_trains(_mlp(before_fc1, "w1_shared", [], extra), tmp_path, caplog)


@pytest.mark.parametrize("between", [
    [node("Cast", ["a"], ["a2"], name="cast", to=TensorProto.FLOAT)],
    [node("Cast", ["a"], ["c"], name="cast", to=TensorProto.FLOAT), node("Identity", ["c"], ["a2"])],
], ids=["cast", "cast-identity"])
def test_a_cast_of_float32_to_float32_between_layers_is_no_op(tmp_path, caplog, between):
    """Relu -> Cast(to=FLOAT) -> Gemm moved the cut after the Cast ('Relu, Cast, which is not
    one Relu, ... it can train through'), freezing fc1."""
    _imports_whole_and_trains(_mlp([], "w1", between, {}), tmp_path, caplog)


def test_a_cast_that_rounds_still_moves_the_cut(tmp_path, caplog):
    """A round trip through float16 rounds the activations: no no-op, so fc1 stays frozen, named."""
    between = [node("Cast", ["a"], ["half"], to=TensorProto.FLOAT16),
               node("Cast", ["half"], ["a2"], to=TensorProto.FLOAT)]
    onnx.save(_mlp([], "w1", between, {}), tmp_path / "m.onnx")
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert spec.onnx_cut == "a2" and spec.layers == ()
    assert "1 dense layer(s) stay frozen in the backbone (Gemm 'fc1')" in caplog.text and "Cast" in caplog.text


def test_a_batch_one_reshape_whose_shape_comes_through_an_identity_takes_any_batch(tmp_path):
    """The fixed-batch Reshape fix (onnx_batch.py) rewrites stored shapes only; a shape read
    through an Identity of one was not stored, so the backbone kept [1, 12] and the build refused
    the model ('cannot be reshaped ... the source's batch dimension is fixed at 1'). Oracle: the
    source run by ONNX Runtime one example at a time."""
    import onnxruntime as ort

    from fedge.edge_runtime.model_runtime import ModelRuntime

    nodes = [node("Identity", ["shape"], ["shape_id"]), node("Elu", ["x"], ["e"]),
             node("Reshape", ["e", "shape_id"], ["f"]), node("Gemm", ["f", "w1", "b1"], ["h"]),
             node("Relu", ["h"], ["a"]), node("Gemm", ["a", "w2", "b2"], ["y"])]
    inits = {"w1": W1, "b1": B1, "w2": W2, "b2": B2, "shape": np.array([1, 12], np.int64)}
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    manifest = build_artifacts(spec, tmp_path / "art", ort_training=False)
    x = RNG.normal(size=(3, 3, 4)).astype(np.float32)
    source = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    want = np.concatenate([source.run(None, {"x": x[i:i + 1]})[0] for i in range(3)])
    runtime = ModelRuntime(tmp_path / "art", expected_model_id=manifest.model_id)
    z = runtime.embed(x)
    np.testing.assert_allclose(np.maximum(z @ W1 + B1, 0) @ W2 + B2, want, rtol=1e-5, atol=1e-5)
