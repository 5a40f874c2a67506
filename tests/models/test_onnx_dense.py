"""One answer to "is this node a dense layer with a stored weight" (models/onnx_dense.py) for the
cut search, the no-tail refusal and the frozen-layer notice, which each had a copy of the test.
Where the copies disagreed, a model got a false reason: a stored W of W @ x^T called a computed
weight, x called the weight of an Einsum that writes W first, and an Einsum projection refused
or passed where the same projection written as MatMul was refused with its reason. Oracles: the
table of forms written out by hand, and the MatMul form of the same layer, which every copy read alike."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from fedge.models.onnx_source import stored_tensors  # noqa: E402

RNG = np.random.default_rng(5)


def _graph(nodes, inits: dict, in_shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _f32(*shape):
    return RNG.normal(size=shape).astype(np.float32)


def _import(model: onnx.ModelProto, tmp_path, **options):
    onnx.save(model, tmp_path / "m.onnx")
    return import_spec(ImportOptions(str(tmp_path / "m.onnx"), head="global", **options))


def _refusal(model: onnx.ModelProto, tmp_path, **options) -> str:
    with pytest.raises(OnnxImportError) as caught:
        _import(model, tmp_path, **options)
    return str(caught.value).removeprefix(f"{tmp_path / 'm.onnx'}: ")


_Q = numpy_helper.from_array(np.arange(12, dtype=np.int8).reshape(4, 3), "q")
_FORMS = [  # (the nodes before the one read, the node, extra stored tensors, the expected (x, weight, start))
    ([], helper.make_node("Gemm", ["inp", "W"], ["o"]), {"W": _f32(4, 3)}, ("inp", "W", "o")),
    ([], helper.make_node("MatMul", ["inp", "W"], ["o"]), {"W": _f32(4, 3)}, ("inp", "W", "o")),
    ([], helper.make_node("MatMul", ["inp", "W3"], ["o"]), {"W3": _f32(2, 4, 3)}, ("inp", "W3", "o")),
    ([helper.make_node("Cast", ["W64"], ["Wc"], to=TensorProto.FLOAT)],
     helper.make_node("MatMul", ["inp", "Wc"], ["o"]), {"W64": _f32(4, 3).astype(np.float64)}, ("inp", "Wc", "o")),
    ([helper.make_node("DequantizeLinear", ["q", "s"], ["Wq"])], helper.make_node("Gemm", ["inp", "Wq"], ["o"]),
     {"s": np.float32(0.1)}, ("inp", "Wq", "o")),
    ([helper.make_node("Transpose", ["Wt"], ["Wtt"], perm=[1, 0])], helper.make_node("MatMul", ["inp", "Wtt"], ["o"]),
     {"Wt": _f32(3, 4)}, ("inp", "Wtt", "o")),
    ([helper.make_node("Transpose", ["inp"], ["xt"], perm=[1, 0])], helper.make_node("MatMul", ["W", "xt"], ["o"]),
     {"W": _f32(3, 4)}, ("inp", "W", "xt")),
    ([], helper.make_node("Einsum", ["inp", "W"], ["o"], equation="bi,oi->bo"), {"W": _f32(3, 4)}, ("inp", "W", "o")),
    ([], helper.make_node("Einsum", ["W", "inp"], ["o"], equation="io,bsi->bso"), {"W": _f32(4, 3)},
     ("inp", "W", "o")),
    ([], helper.make_node("Einsum", ["inp", "s4"], ["o"], equation="bi,i->bi"), {"s4": _f32(4)}, None),
    ([], helper.make_node("MatMul", ["inp", "inp"], ["o"]), {}, None),
    ([helper.make_node("Relu", ["inp"], ["r"])], helper.make_node("MatMul", ["W", "r"], ["o"]), {"W": _f32(3, 4)},
     None),
    ([], helper.make_node("Conv", ["inp", "W"], ["o"]), {"W": _f32(3, 4)}, None),
]


@pytest.mark.parametrize("before, node, inits, expected", _FORMS, ids=[
    "gemm", "matmul", "matmul-3d-weight", "cast-fed", "dequantized", "transposed-weight", "w-times-x-transposed",
    "einsum", "einsum-projection-weight-first", "einsum-feature-scale", "matmul-of-two-computed",
    "w-times-x-not-transposed", "conv"])
def test_dense_operands_names_x_the_stored_weight_and_the_first_node(before, node, inits, expected):
    from fedge.models.onnx_dense import dense_operands  # here: the bug tests below run on the files before it too

    graph = helper.make_graph([*before, node], "g", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, None)],
                              [], [_Q, *(numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items())])
    consts = {k: numpy_helper.to_array(t) for k, t in stored_tensors(graph).items()}
    producer = {o: n for n in graph.node for o in n.output}
    found = dense_operands(node, consts, producer)
    assert (found if found is None else (found.x, found.weight, found.start.output[0])) == expected


def _left_matmul(then: list, inits: dict, out_shape) -> onnx.ModelProto:
    """x (4, 4) -> Transpose -> MatMul(Wl, x^T) -> Add b (4,) -> Transpose: b is added per example,
    not per output, so this is no layer the tail reads (onnx_transposed.py); but Wl is stored."""
    nodes = [helper.make_node("Transpose", ["inp"], ["t"], perm=[1, 0], name="t"),
             helper.make_node("MatMul", ["Wl", "t"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "bb"], ["a"], name="add"),
             helper.make_node("Transpose", ["a"], ["a2" if then else "out"], perm=[1, 0], name="t2"), *then]
    return _graph(nodes, {"Wl": _f32(4, 4), "bb": _f32(4), **inits}, [4, 4], out_shape)


_PER_EXAMPLE = "MatMul node 'mm': its bias 'bb' of shape (4,) is added to W @ x^T, which is (outputs, batch), so " \
    "it is added per example, not per output: store it as (4, 1)"


def test_a_stored_w_times_x_transposed_is_not_refused_as_a_computed_weight(tmp_path):
    """The no-tail refusal named x^T as the MatMul's computed weight ("multiplies by 't', computed
    by Transpose node 't', not stored"): its weight Wl is stored, as the notice's copy knew. Then
    it named the Transpose ("Transpose node 't' after 'inp': the trainable tail takes dense
    layers"), not the MatMul, and not the cause: the bias of shape (out,) added per example."""
    why = _refusal(_left_matmul([], {}, [4, 4]), tmp_path)
    assert "not stored" not in why and "computed" not in why and "Transpose node" not in why
    assert why.startswith(f"found no dense tail to train (no Gemm/MatMul with stored weights leads to the output): "
                          f"{_PER_EXAMPLE}")


def test_w_times_x_transposed_without_its_outer_transpose_is_refused_under_its_matmul(tmp_path):
    """W @ x^T left (outputs, batch): refused as "Transpose node 't' after 'inp': the trainable
    tail takes dense layers", naming neither the layer's MatMul nor the missing Transpose."""
    nodes = [helper.make_node("Transpose", ["inp"], ["t"], perm=[1, 0], name="t"),
             helper.make_node("MatMul", ["Wl", "t"], ["out"], name="mm")]
    why = _refusal(_graph(nodes, {"Wl": _f32(3, 4)}, [5, 4], [3, 5]), tmp_path)
    assert "MatMul node 'mm': W @ x^T gives (outputs, batch), and no Transpose after it" in why
    assert "Transpose node" not in why


def test_the_notice_does_not_call_a_stored_w_times_x_transposed_computed(tmp_path, caplog):
    then = [helper.make_node("Elu", ["a2"], ["h"], name="elu"), helper.make_node("Gemm", ["h", "W", "b"], ["out"])]
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = _import(_left_matmul(then, {"W": _f32(4, 3), "b": np.zeros(3, np.float32)}, [4, 3]), tmp_path)
    assert spec.onnx_cut == "h"
    assert "1 dense layer(s) stay frozen in the backbone (MatMul 'mm')" in caplog.text
    assert "computed" not in caplog.text and f"it cannot start at {_PER_EXAMPLE}" in caplog.text


def _projection(op: str, then: list, inits: dict, out_shape) -> onnx.ModelProto:
    """x (N, 2, 4) -> a projection by W1 (4, 5): Einsum with W first, or MatMul(x, W1)."""
    node = helper.make_node("Einsum", ["W1", "inp"], ["e"], equation="io,bsi->bso", name="proj") if op == "Einsum" \
        else helper.make_node("MatMul", ["inp", "W1"], ["e"], name="proj")
    if not then:
        node.output[0] = "out"
    return _graph([node, *then], {"W1": _f32(4, 5), **inits}, [None, 2, 4], out_shape)


def test_the_notice_does_not_call_x_the_weight_of_an_einsum_written_weight_first(tmp_path, caplog):
    """Einsum('io,bsi->bso', W, x) frozen before the cut: the notice said "'inp' is its weight
    operand, not its input"; inp is its input."""
    then = [helper.make_node("Relu", ["e"], ["r"], name="relu"), helper.make_node("Flatten", ["r"], ["h"], name="flat"),
            helper.make_node("Gemm", ["h", "W", "b"], ["out"], name="fc")]
    with caplog.at_level("WARNING", logger="fedge.models"):
        _import(_projection("Einsum", then, {"W": _f32(10, 3), "b": np.zeros(3, np.float32)}, [None, 3]), tmp_path)
    assert "1 dense layer(s) stay frozen in the backbone (Einsum 'proj')" in caplog.text
    assert "weight operand" not in caplog.text
    assert "it cannot start at Einsum node 'proj': its equation 'io,bsi->bso' reads x as 3-D; the tail's layers take " \
           "x (batch, features): cut after the Flatten or global pooling" in caplog.text


def test_a_projection_alone_is_refused_alike_as_einsum_or_matmul(tmp_path):
    """The MatMul projection was refused with its reason (rank 3); the same layer as an Einsum only
    listed the graph's ops ("the graph holds Einsum"): the cut search tried MatMul and not it."""
    matmul = _refusal(_projection("MatMul", [], {}, [None, 2, 5]), tmp_path)
    einsum = _refusal(_projection("Einsum", [], {}, [None, 2, 5]), tmp_path)
    assert "cut tensor 'inp' has rank 3" in matmul and einsum == matmul


@pytest.mark.parametrize("classes", [0, 3], ids=["kept-head", "new-head"])
def test_a_projection_after_the_classifiers_reshape_is_refused_alike_as_einsum_or_matmul(tmp_path, classes):
    """Gemm -> Reshape (N, 2, 3) -> projection. As MatMul, the tail that ends at the Reshape is
    refused (a dense layer follows it); as Einsum it was taken, and with --classes the projection
    was dropped without a word, as if prediction post-processing."""
    def model(op):
        then = [helper.make_node("Gemm", ["inp", "W", "b"], ["l"], name="fc"),
                helper.make_node("Reshape", ["l", "shp"], ["r"], name="rs"),
                helper.make_node("Einsum", ["r", "W1"], ["out"], equation="bsi,io->bso", name="proj") if op == "Einsum"
                else helper.make_node("MatMul", ["r", "W1"], ["out"], name="proj")]
        return _graph(then, {"W": _f32(4, 6), "b": np.zeros(6, np.float32), "shp": np.array([-1, 2, 3], np.int64),
                             "W1": _f32(3, 2)}, [None, 4], [None, 2, 2])

    matmul = _refusal(model("MatMul"), tmp_path, num_classes=classes)
    assert "cut tensor 'r' has rank 3" in matmul
    assert _refusal(model("Einsum"), tmp_path, num_classes=classes) == matmul


def _einsum(equation: str, w_shape, then: list, x_shape=(None, 4)) -> onnx.ModelProto:
    node = helper.make_node("Einsum", ["inp", "W1"], ["e" if then else "out"], equation=equation, name="es")
    inits = {"W1": _f32(*w_shape), "W": _f32(6 if len(w_shape) == 3 else 3, 3)}  # the features after the Flatten
    return _graph([node, *then], inits, list(x_shape), [None, 3] if then else None)


_FROZEN = [helper.make_node("Flatten", ["e"], ["f"]), helper.make_node("Relu", ["f"], ["h"], name="relu"),
           helper.make_node("Gemm", ["h", "W"], ["out"], name="fc")]


@pytest.mark.parametrize("equation, w_shape, x_shape", [
    ("bi,oi", (3, 4), (None, 4)), ("bi,io", (4, 3), (None, 4)), ("...i,oi->...o", (3, 4), (None, 4)),
    ("bi,oi->ob", (3, 4), (None, 4)), ("ib,oi->bo", (3, 4), (4, 5))])
def test_an_einsum_layer_the_tail_cannot_read_is_told_the_forms_it_reads(tmp_path, caplog, equation, w_shape, x_shape):
    """Each is a dense layer of a stored matrix (onnx_dense.py) in a form the tail does not read:
    the refusal and the notice ended "cut later, or after this node", odd where the cut was chosen
    for the user. Each now names its Einsum, its equation, the forms read and the fix."""
    why = f"Einsum node 'es': its equation {equation!r} is not one the tail reads: 'bi,oi->bo' "
    fix = "rewrite it as a MatMul (torch: nn.Linear, or x @ W.T) or with the explicit equation 'bi,oi->bo'"
    refusal = _refusal(_einsum(equation, w_shape, [], x_shape), tmp_path)
    assert why in refusal and fix in refusal and "cut later" not in refusal
    with caplog.at_level("WARNING", logger="fedge.models"):
        assert _import(_einsum(equation, w_shape, _FROZEN, x_shape), tmp_path).onnx_cut == "h"
    assert f"it cannot start at {why}" in caplog.text and fix in caplog.text and "cut later" not in caplog.text


def test_an_einsum_of_a_three_dim_weight_is_told_its_weight_is_no_matrix(tmp_path, caplog):
    """Einsum('bi,ioj->boj', x, W (4, 3, 2)): the notice said "weight has shape (4, 3, 2); dense
    layers need a matrix" (as MatMul's refusal of a 3-D weight says), then the generic "cut later"."""
    with caplog.at_level("WARNING", logger="fedge.models"):
        _import(_einsum("bi,ioj->boj", (4, 3, 2), _FROZEN), tmp_path)
    assert "it cannot start at Einsum node 'es': weight has shape (4, 3, 2); dense layers need a matrix" in caplog.text


def _scores_then(post: list, inits: dict) -> onnx.ModelProto:
    """Gemm 'fc' -> Softmax -> a projection of the probabilities the tail cannot read."""
    nodes = [helper.make_node("Gemm", ["inp", "W"], ["l"], name="fc"), helper.make_node("Softmax", ["l"], ["p"]), *post]
    return _graph(nodes, {"W": _f32(4, 3), **inits}, [None, 4], None)


_POSTS = {"einsum-3d": ([helper.make_node("Einsum", ["p", "Wp"], ["out"], equation="bc,cdk->bdk", name="post")],
                        {"Wp": _f32(3, 2, 2)}, "Einsum node 'post'"),
          "w-times-x-transposed": ([helper.make_node("Transpose", ["p"], ["pt"], perm=[1, 0], name="pt"),
                                    helper.make_node("MatMul", ["Wp", "pt"], ["out"], name="post")],
                                   {"Wp": _f32(2, 3)}, "Transpose node 'pt'")}


@pytest.mark.parametrize("post", _POSTS, ids=list(_POSTS))
def test_a_layer_the_tail_cannot_read_after_the_classifiers_softmax_is_post_processing(tmp_path, post):
    """It was refused as "not prediction post-processing ... give --classes K" and imported with
    --classes K (a new head on the input); then as "found no dense tail to train" with the advice
    "give ... --classes K", which was refused too (the Softmax counted as a Flatten between two
    dense layers). A Flatten between two layers still is one (test_onnx_import_exports.py,
    test_a_flatten_between_dense_layers_moves_the_cut_after_it)."""
    nodes, inits, label = _POSTS[post]
    why = _refusal(_scores_then(nodes, inits), tmp_path)
    assert why.startswith(f"{label} is computed from the output of classifier 'fc' and is not prediction "
                          "post-processing") and "give --classes K for a new head" in why
    spec = _import(_scores_then(nodes, inits), tmp_path, num_classes=3)
    assert (spec.onnx_cut, spec.layers, spec.num_classes, spec.onnx_features) == ("inp", (), 3, 4)


def test_a_softmax_inside_the_network_before_an_unreadable_projection_is_no_classifier(tmp_path):
    """Gemm -> Softmax -> Einsum 'bk,kdh->bdh' (stored 3-D prototypes) -> Flatten -> Relu -> Gemm: an
    attention-like block before the real classifier. It imported with the cut after the Relu until
    the refactor took the first dense layer after the Softmax, the unreadable Einsum, as proof that
    the Softmax ended the tail: refused without --classes, and with --classes 3 a new head on the raw
    input (the whole network thrown away). The first READABLE layer after it decides."""
    nodes = [helper.make_node("Gemm", ["inp", "Wg", "bg"], ["s"], name="attn_scores"),
             helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("Einsum", ["p", "P"], ["m"], equation="bk,kdh->bdh", name="prototypes"),
             helper.make_node("Flatten", ["m"], ["fl"]), helper.make_node("Relu", ["fl"], ["hh"]),
             helper.make_node("Gemm", ["hh", "Wc", "bc"], ["out"], name="classifier")]
    inits = {"Wg": _f32(4, 3), "bg": _f32(3), "P": _f32(3, 2, 2), "Wc": _f32(4, 5), "bc": _f32(5)}
    model = _graph(nodes, inits, [None, 4], [None, 5])
    spec = _import(model, tmp_path)
    assert (spec.onnx_cut, spec.onnx_features, spec.num_classes) == ("hh", 4, 5)
    spec = _import(model, tmp_path, num_classes=3)  # a new head on the same cut, not on the input
    assert (spec.onnx_cut, spec.num_classes) == ("hh", 3)


def test_a_softmax_before_a_projection_of_each_position_is_no_classifier(tmp_path):
    """x -> Gemm 'gate' -> Softmax -> Unsqueeze -> Mul(E) -> MatMul 'proj' (3-D input) -> ReduceSum: a
    mixture of experts' gate. Once the tail refused a MatMul of a 3-D input for its rank, the Softmax
    counted as the classifier's post-processing, and with --classes 3 the model imported as a new head
    on the raw input (cut 'x', no layers), the whole network dropped silently. Oracle: the graph has
    no 2-D dense tail to the output, so it is refused, with and without --classes."""
    nodes = [helper.make_node("Gemm", ["inp", "Wg", "bg"], ["g"], name="gate"),
             helper.make_node("Softmax", ["g"], ["s"], axis=-1),
             helper.make_node("Unsqueeze", ["s", "ax2"], ["s3"]), helper.make_node("Mul", ["s3", "E"], ["m"]),
             helper.make_node("MatMul", ["m", "Wp"], ["p"], name="proj"),
             helper.make_node("ReduceSum", ["p", "ax1"], ["out"], keepdims=0)]
    inits = {"Wg": _f32(8, 4), "bg": _f32(4), "E": _f32(1, 4, 6), "Wp": _f32(6, 3), "ax2": np.array([2]),
             "ax1": np.array([1])}
    model = _graph(nodes, inits, [None, 8], [None, 3])
    for classes in (0, 3):
        why = _refusal(model, tmp_path, num_classes=classes)
        assert why.startswith("found no dense tail to train") and "'m' has rank 3" in why, why


@pytest.mark.parametrize("post", _POSTS, ids=list(_POSTS))
def test_the_notice_does_not_call_a_layer_after_the_new_heads_cut_frozen(tmp_path, caplog, post):
    """With --classes 3 the new head sits on the input and the layers after the Softmax are dropped
    with the source's classifier, yet the notice said "1 dense layer(s) stay frozen in the backbone
    (Einsum 'post')". Oracle: the backbone is the graph up to the cut, here the input: nothing."""
    nodes, inits, _ = _POSTS[post]
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = _import(_scores_then(nodes, inits), tmp_path, num_classes=3)
    assert (spec.onnx_cut, spec.layers) == ("inp", ())
    assert "stay frozen" not in caplog.text and "'post'" not in caplog.text


def test_the_notice_still_names_a_layer_before_the_cut_with_a_dropped_one_after_it(tmp_path, caplog):
    """Gemm 'pre' -> Elu -> Gemm 'fc' -> Softmax -> Einsum 'post' (3-D weight) with --classes 3: 'pre'
    is in the backbone (frozen), 'post' is dropped; only 'pre' is named."""
    nodes = [helper.make_node("Gemm", ["inp", "Wpre"], ["h0"], name="pre"), helper.make_node("Elu", ["h0"], ["h"]),
             helper.make_node("Gemm", ["h", "W"], ["l"], name="fc"), helper.make_node("Softmax", ["l"], ["p"]),
             *_POSTS["einsum-3d"][0]]
    model = _graph(nodes, {"Wpre": _f32(4, 4), "W": _f32(4, 3), "Wp": _f32(3, 2, 2)}, [None, 4], None)
    with caplog.at_level("WARNING", logger="fedge.models"):
        spec = _import(model, tmp_path, num_classes=3)
    assert spec.onnx_cut == "h"
    assert "1 dense layer(s) stay frozen in the backbone (Gemm 'pre')" in caplog.text and "'post'" not in caplog.text


def _t(src: str, dst: str, name: str):
    return helper.make_node("Transpose", [src], [dst], perm=[1, 0], name=name)


_NOT_TRANSPOSED = {  # (the nodes, stored tensors, extra graph outputs, the reason the refusal must give)
    "relu-before-the-transpose": (
        [_t("inp", "t", "t"), helper.make_node("MatMul", ["Wl", "t"], ["m"], name="mm"),
         helper.make_node("Add", ["m", "bb"], ["a"], name="add"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
         _t("r", "out", "t2")], {"bb": np.zeros((3, 1), np.float32)}, [],
        "W @ x^T + b (outputs, batch) is read by Relu node 'relu', not by the Transpose that turns it into "
        "(batch, outputs)"),
    "also-a-graph-output": (
        [_t("inp", "t", "t"), helper.make_node("MatMul", ["Wl", "t"], ["m"], name="mm"), _t("m", "out", "t2")], {},
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [3, 5])],
        "W @ x^T (outputs, batch) is also a graph output, not only read by the Transpose after it"),
    "added-to-itself": (
        [_t("inp", "t", "t"), helper.make_node("MatMul", ["Wl", "t"], ["m"], name="mm"),
         helper.make_node("Add", ["m", "m"], ["a"], name="add"), _t("a", "out", "t2")], {}, [],
        "W @ x^T (outputs, batch) has 2 readers (Add node 'add'), not one Transpose"),
}


@pytest.mark.parametrize("case", _NOT_TRANSPOSED, ids=list(_NOT_TRANSPOSED))
def test_w_times_x_transposed_that_is_no_layer_is_refused_with_its_actual_cause(tmp_path, case):
    """Every such case was refused as "no Transpose after it", also where one follows. Each model
    below has its outer Transpose; the refusal names what else reads W @ x^T (+ b)."""
    nodes, inits, outputs, reason = _NOT_TRANSPOSED[case]
    model = _graph(nodes, {"Wl": _f32(3, 4), **inits}, [5, 4], [5, 3])
    model.graph.output.extend(outputs)
    why = _refusal(model, tmp_path)
    assert f"MatMul node 'mm': {reason}: the tail reads (W @ x^T + b)^T" in why and "no Transpose after" not in why
