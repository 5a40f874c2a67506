"""NaN and Inf weights in the frozen backbone of an imported model (models/onnx_finite.py):
refused by name, at import and at the build of a spec file, where they imported silently (the
whole-model check skips a source that gives non-finite values). A -inf that is no weight (a
mask's, a bound's) is the exporter's own and imports."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from tests.models.test_onnx_import import CONV, _cnn, _model  # noqa: E402


def _with_conv(tmp_path, value: float, name: str = "bad.onnx"):
    model = _cnn()
    conv = CONV.copy()
    conv[1, 0, 2, 1] = value
    init = next(i for i in model.graph.initializer if i.name == "cw")
    init.CopyFrom(onnx.numpy_helper.from_array(conv, "cw"))
    onnx.save(model, tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("value, what", [(np.nan, "1 NaN"), (np.inf, "1 Inf"), (-np.inf, "1 Inf")])
@pytest.mark.parametrize("options", [{}, {"cut": "feat", "num_classes": 5}])
def test_a_conv_kernel_with_a_nan_or_inf_before_the_cut_is_refused_naming_it(tmp_path, value, what, options):
    path = _with_conv(tmp_path, value)
    with pytest.raises(OnnxImportError, match=rf"stored tensor 'cw', read by Conv node 'conv' in the frozen "
                                              rf"backbone \(before the cut 'feat'\), holds {what} value"):
        import_spec(ImportOptions(str(path), **options))


def test_the_cli_names_it_without_a_traceback(tmp_path, capsys):
    from fedge.tools.cli import main

    path = _with_conv(tmp_path, np.nan)
    assert main(["build-artifacts", "--from-onnx", str(path), str(tmp_path / "art"), "--ort-training", "no"]) != 0
    err = capsys.readouterr().err
    assert "'cw', read by Conv node 'conv'" in err and "Traceback" not in err
    assert not (tmp_path / "art").exists()


def test_a_spec_file_naming_such_a_source_is_refused_at_the_build(tmp_path):
    """A spec written by hand (or for another file) never passes through import_spec."""
    spec = import_spec(ImportOptions(str(_with_conv(tmp_path, 0.5, "good.onnx"))))
    bad = _with_conv(tmp_path, np.nan)
    spec = dataclasses.replace(spec, onnx=str(bad), onnx_sha256=hashlib.sha256(bad.read_bytes()).hexdigest())
    with pytest.raises(OnnxImportError, match="'cw', read by Conv node 'conv'"):
        build_artifacts(spec, tmp_path / "art", ort_training=False)


def test_an_inf_no_weight_op_reads_imports_but_a_nan_there_does_not(tmp_path):
    """Max(x, -inf) is x: a bound, not a weight. Oracle: the import's cut and features."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])]
    nodes = [helper.make_node("Max", ["x", "floor"], ["m"], name="floor_max"),
             helper.make_node("Sin", ["m"], ["s"], name="sin"),
             helper.make_node("MatMul", ["s", "w"], ["prob"], name="out")]
    inits = {"floor": np.array([-np.inf], np.float32), "w": np.ones((4, 3), np.float32)}
    onnx.save(_model(nodes, inits, inputs), tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert (spec.onnx_cut, spec.onnx_features) == ("s", 4)
    inits["floor"] = np.array([np.nan], np.float32)  # NaN is no bound: refused wherever it is read
    onnx.save(_model(nodes, inits, inputs), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match="'floor', read by Max node 'floor_max'.*holds 1 NaN"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


RNG = np.random.default_rng(5)
WB = RNG.normal(size=(4, 4)).astype(np.float32)  # the backbone's (in, out), read inside an If branch
W1 = RNG.normal(size=(4, 3)).astype(np.float32)


def _with_bad(value: float) -> np.ndarray:
    bad = WB.copy()
    bad[1, 2] = value
    return bad


def _branch(name: str, weight: str, inits=(), constants=()) -> onnx.GraphProto:
    nodes = [*(helper.make_node("Constant", [], [k], value=onnx.numpy_helper.from_array(v)) for k, v in constants),
             helper.make_node("MatMul", ["x", weight], [f"{name}_out"], name=f"{name}_mm")]
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)],
                             [onnx.numpy_helper.from_array(v, k) for k, v in inits])


def _if_model(then: onnx.GraphProto, outer: dict, outer_nodes=()) -> onnx.ModelProto:
    """x (N, 4) -> If(cond): then x @ (a weight the branch reads), else x @ WB -> Sin -> MatMul (3)."""
    nodes = [*outer_nodes,
             helper.make_node("If", ["cond"], ["feat"], name="branchy", then_branch=then,
                              else_branch=_branch("else", "wgood")),
             helper.make_node("Sin", ["feat"], ["s"], name="sin"),
             helper.make_node("MatMul", ["s", "w1"], ["prob"], name="out")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])]
    return _model(nodes, {"cond": np.array(True), "wgood": WB, "w1": W1, **outer}, inputs)


@pytest.mark.parametrize("value, what", [(np.nan, "1 NaN"), (np.inf, "1 Inf")])
@pytest.mark.parametrize("case", ["outer initializer", "branch initializer", "branch Constant"])
def test_a_bad_weight_an_if_branch_reads_is_refused_naming_it(tmp_path, value, what, case):
    """The branch reads the outer initializer by name (no input of the If says so), or holds its own:
    the first imported unchecked, and an Inf in the others too (only NaN was looked for in subgraphs)."""
    bad = _with_bad(value)
    model, name = {
        "outer initializer": (_if_model(_branch("then", "wout"), {"wout": bad}), "wout"),
        "branch initializer": (_if_model(_branch("then", "win", inits=[("win", bad)]), {}), "win"),
        "branch Constant": (_if_model(_branch("then", "win", constants=[("win", bad)]), {}), "win"),
    }[case]
    onnx.save(model, tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=rf"stored tensor '{name}', read by MatMul node 'then_mm' in a subgraph "
                                              rf"of If node 'branchy' in the frozen backbone \(before the cut 's'\), "
                                              rf"holds {what} value"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def test_an_inf_weight_a_loop_body_reads_by_its_outer_name_is_refused(tmp_path):
    """Loop(1 trip) with body v -> v @ wout: the body's own inputs (i, c, v) are not wout."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]),
         helper.make_node("MatMul", ["v", "wout"], ["v_out"], name="step")],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("c", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Loop", ["trips", "cond", "x"], ["feat"], name="loop", body=body),
             helper.make_node("Sin", ["feat"], ["s"], name="sin"), helper.make_node("MatMul", ["s", "w1"], ["prob"])]
    inits = {"trips": np.array(1, np.int64), "cond": np.array(True), "wout": _with_bad(-np.inf), "w1": W1}
    onnx.save(_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])]),
              tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=r"'wout', read by MatMul node 'step' in a subgraph of Loop node 'loop' "
                                              r"in the frozen backbone \(before the cut 's'\), holds 1 Inf"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def test_a_nan_only_an_if_branch_depends_on_is_refused(tmp_path):
    """Identity(w) outside, read by name inside the branch: the Identity is no input of the If,
    so the walk from the cut never reached it."""
    alias = helper.make_node("Identity", ["wout"], ["wi"], name="alias")
    onnx.save(_if_model(_branch("then", "wi"), {"wout": _with_bad(np.nan)}, [alias]), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=r"stored tensor 'wout', read by Identity node 'alias' in the frozen "
                                              r"backbone \(before the cut 's'\), holds 1 NaN value"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx")))


def test_a_clean_if_branch_passes_the_check():
    """Oracle for the walk: the same model with finite weights raises nothing."""
    from fedge.models.onnx_finite import check_backbone_finite

    check_backbone_finite(_if_model(_branch("then", "wout"), {"wout": WB}), "s", "m.onnx")


def _mlp(b1: np.ndarray) -> onnx.ModelProto:
    """x (N, 4) -> MatMul + Add (5) -> Relu -> MatMul + Add (3) -> Softmax."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["h1"], name="fc1_bias"),
             helper.make_node("Relu", ["h1"], ["a1"], name="act1"),
             helper.make_node("MatMul", ["a1", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["logits"], name="fc2_bias"),
             helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1)]
    inits = {"w1": RNG.normal(size=(4, 5)).astype(np.float32), "b1": b1,
             "w2": RNG.normal(size=(5, 3)).astype(np.float32), "b2": np.zeros(3, np.float32)}
    return _model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])])


@pytest.mark.parametrize("value", [np.inf, -np.inf])
@pytest.mark.parametrize("options", [{}, {"num_classes": 4}, {"cut": "a1"}])
def test_an_inf_in_a_dense_layers_bias_add_is_refused(tmp_path, value, options):
    """The layer is refused as a tail layer, so the automatic cut moved past it and the Add of an
    Inf bias imported in the backbone (an Add is no weight op): features of Inf for every input."""
    b1 = np.zeros(5, np.float32)
    b1[2] = value
    onnx.save(_mlp(b1), tmp_path / "m.onnx")
    with pytest.raises(OnnxImportError, match=r"stored tensor 'b1', read by Add node 'fc1_bias' in the frozen "
                                              r"backbone \(before the cut 'a1'\), holds 1 Inf value"):
        import_spec(ImportOptions(str(tmp_path / "m.onnx"), **options))


def test_an_attention_mask_of_minus_inf_still_imports(tmp_path):
    """Add(scores, mask) with scores = q @ k of computed operands is a mask, not a bias. Oracle:
    the import's cut and features, as with no mask."""
    causal = np.triu(np.full((4, 4), -np.inf, np.float32), 1)
    nodes = [helper.make_node("Unsqueeze", ["x", "ax2"], ["q"], name="q"),
             helper.make_node("Unsqueeze", ["x", "ax1"], ["k"], name="k"),
             helper.make_node("MatMul", ["q", "k"], ["scores"], name="qk"),  # (N, 4, 4)
             helper.make_node("Add", ["scores", "mask"], ["masked"], name="mask_add"),
             helper.make_node("Softmax", ["masked"], ["att"], name="att", axis=-1),
             helper.make_node("ReduceSum", ["att", "ax1"], ["pooled"], name="pool", keepdims=0),  # (N, 4)
             helper.make_node("MatMul", ["pooled", "w"], ["prob"], name="out")]
    inits = {"ax1": np.array([1], np.int64), "ax2": np.array([2], np.int64), "mask": causal,
             "w": RNG.normal(size=(4, 3)).astype(np.float32)}
    onnx.save(_model(nodes, inits, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4])]),
              tmp_path / "m.onnx")
    spec = import_spec(ImportOptions(str(tmp_path / "m.onnx")))
    assert (spec.onnx_cut, spec.onnx_features) == ("pooled", 4)
