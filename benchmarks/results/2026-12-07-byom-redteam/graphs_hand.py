"""The probe's hand-written graphs (onnx.helper): x (N, 12) -> Gemm 6 -> Relu -> Gemm 4 -> y, and
variations of each part of it. Each entry: name -> (model, probe keywords)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

R = np.random.default_rng(3)
W1, B1 = R.normal(size=(12, 6)).astype(np.float32), R.normal(size=6).astype(np.float32)
W2, B2 = R.normal(size=(6, 4)).astype(np.float32), R.normal(size=4).astype(np.float32)
BASE = {"w1": W1, "b1": B1, "w2": W2, "b2": B2}
N = helper.make_node
X12 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 12])
X3x4 = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])


def model(nodes, inits, opset=13, inputs=(X12,), outputs=None, ir=None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", list(inputs), outputs or [helper.make_tensor_value_info("y", 1, None)],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir:
        m.ir_version = ir
    return m


def mlp(first=None, between=(), second=None, source="x"):
    """source -> first (writes 'h') -> Relu 'a' -> between ('a' -> 'a2') -> second (-> 'y')."""
    first = first or [N("Gemm", [source, "w1", "b1"], ["h"], name="fc1")]
    second = second or [N("Gemm", ["a2" if between else "a", "w2", "b2"], ["y"], name="fc2")]
    return [*first, N("Relu", ["h"], ["a"], name="relu1"), *between, *second]


def _add(order, m, b, out, name):
    return N("Add", [b, m] if order == "bias-first" else [m, b], [out], name=name)


def _shape_before(shape, x_shape=X3x4):
    return model([N("Reshape", ["x", "s"], ["f"]), *mlp(source="f")], {**BASE, "s": np.array(shape, np.int64)},
                 inputs=[x_shape])


def graphs() -> dict:
    g = {}
    g["gemm transB=0 alpha=0.5 beta=2 C[1,N]; classifier transB=1 alpha=-1.5 beta=0.25"] = model(mlp(
        [N("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", alpha=0.5, beta=2.0)],
        second=[N("Gemm", ["a", "w2t", "b2"], ["y"], name="fc2", transB=1, alpha=-1.5, beta=0.25)]),
        {"w1": W1, "b1": B1[None], "w2t": W2.T.copy(), "b2": B2[None]}), {}
    g["gemm transB=1 scalar C; classifier without C, beta=3"] = model(mlp(
        [N("Gemm", ["x", "w1t", "c"], ["h"], name="fc1", transB=1)], second=[N("Gemm", ["a", "w2"], ["y"], beta=3.0)]),
        {"w1t": W1.T.copy(), "c": np.float32(0.3), "w2": W2}), {}
    for order in ("bias-first", "bias-second"):
        g[f"MatMul+Add, {order} input of Add"] = model(mlp(
            [N("MatMul", ["x", "w1"], ["m1"], name="mm1"), _add(order, "m1", "b1", "h", "add1")],
            second=[N("MatMul", ["a", "w2"], ["m2"], name="mm2"), _add(order, "m2", "b2", "y", "add2")]), BASE), {}
    g["MatMul+Add, bias [1,1,N] (rank 3 out)"] = model(mlp([N("MatMul", ["x", "w1"], ["m1"]), N(
        "Add", ["m1", "b1"], ["h"], name="add1")]), {**BASE, "b1": B1[None, None]}), {}
    g["MatMul(W, x^T) then Transpose"] = model([N("Transpose", ["x"], ["xt"]), N("MatMul", ["w1t", "xt"], ["ht"]),
                                                N("Transpose", ["ht"], ["h"]), N("Relu", ["h"], ["a"]),
                                                N("Gemm", ["a", "w2", "b2"], ["y"])], {"w1t": W1.T.copy(), "w2": W2,
                                                                                      "b2": B2}), {}
    g["two Identity between layers"] = model(mlp(between=[N("Identity", ["a"], ["i"]), N("Identity", ["i"], ["a2"])]),
                                             BASE), {}
    g["Cast to FLOAT between layers"] = model(mlp(between=[N("Cast", ["a"], ["a2"], to=1)]), BASE), {}
    g["Cast to FLOAT before the Relu"] = model([N("Gemm", ["x", "w1", "b1"], ["h0"]), N("Cast", ["h0"], ["h"], to=1),
                                                N("Relu", ["h"], ["a"]), N("Gemm", ["a", "w2", "b2"], ["y"])], BASE), {}
    g["Cast to FLOAT16 and back between layers"] = model(mlp(between=[N("Cast", ["a"], ["c"], to=10),
                                                                      N("Cast", ["c"], ["a2"], to=1)]), BASE), {}
    g["Cast to FLOAT on the input"] = model([N("Cast", ["x"], ["xc"], to=1), *mlp(source="xc")], BASE), {}
    g["Cast after the logits, then Softmax"] = model(mlp(second=[N("Gemm", ["a", "w2", "b2"], ["l"]), N(
        "Cast", ["l"], ["lc"], to=1), N("Softmax", ["lc"], ["y"], axis=1)]), BASE), {"kind": "probs"}
    g["tail in double after a Cast"] = model([N("Cast", ["x"], ["xd"], to=11), *mlp(source="xd")[:-1],
                                              N("Gemm", ["a", "w2", "b2"], ["yd"]), N("Cast", ["yd"], ["y"], to=1)],
                                             {k: v.astype(np.float64) for k, v in BASE.items()}), {}
    g["Flatten before the tail"] = model([N("Flatten", ["x"], ["f"]), *mlp(source="f")], BASE, inputs=[X3x4]), {}
    g["Reshape [0,-1] before the tail"] = _shape_before([0, -1]), {}
    g["Reshape [-1,12] before the tail"] = _shape_before([-1, 12]), {}
    g["Reshape [1,12], batch fixed at 1"] = _shape_before(
        [1, 12], helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])), {"fixed": True}
    for op, kind in (("Softmax", "probs"), ("LogSoftmax", "logprobs")):
        for opset in (11, 13):
            g[f"final {op}, opset {opset}"] = model(mlp(second=[N("Gemm", ["a", "w2", "b2"], ["l"]), N(
                op, ["l"], ["y"], axis=1)]), BASE, opset=opset), {"kind": kind}
    for opset in (13, 17, 18, 21):
        g[f"opset {opset}"] = model(mlp(), BASE, opset=opset), {}
    g["opset 21, batch fixed at 1"] = model(mlp(), BASE, opset=21, inputs=[
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12])]), {"fixed": True}
    g["every weight a Constant node"] = model([*(N("Constant", [], [k], value=numpy_helper.from_array(v, k))
                                                 for k, v in BASE.items()), *mlp()], {}), {}
    g["bias a Constant value_floats"] = model([N("Constant", [], ["b1"], value_floats=B1.tolist()), *mlp()],
                                              {"w1": W1, "w2": W2, "b2": B2}), {}
    g["weight through an Identity"] = model([N("Identity", ["w1"], ["w1i"]), *mlp(
        [N("Gemm", ["x", "w1i", "b1"], ["h"], name="fc1")])], BASE), {}
    g["weight a Cast of a float16 initializer"] = model([N("Cast", ["w1h"], ["w1c"], to=1), *mlp(
        [N("Gemm", ["x", "w1c", "b1"], ["h"], name="fc1")])], {**BASE, "w1h": W1.astype(np.float16)}), {}
    g["bias a graph input with an initializer (IR 8)"] = model(mlp(), BASE, ir=8, inputs=[
        X12, helper.make_tensor_value_info("b2", TensorProto.FLOAT, [4])]), {}
    g["Unsqueeze+Squeeze between layers"] = model(mlp(between=[N("Unsqueeze", ["a", "ax"], ["u"]), N(
        "Squeeze", ["u", "ax"], ["a2"])]), {**BASE, "ax": np.array([1], np.int64)}), {}
    g["MatMul+Sub as bias"] = model(mlp([N("MatMul", ["x", "w1"], ["m1"]), N("Sub", ["m1", "b1"], ["h"])]), BASE), {}
    g["per-feature Mul after a layer"] = model(mlp([N("Gemm", ["x", "w1", "b1"], ["h0"]), N(
        "Mul", ["h0", "s"], ["h"])]), {**BASE, "s": R.uniform(0.5, 2, 6).astype(np.float32)}), {}
    g["Div(T, logits)"] = model(mlp(second=[N("Gemm", ["a", "w2", "b2"], ["l"]), N("Div", ["t", "l"], ["y"])]),
                                {**BASE, "t": np.float32(2.0)}), {}
    g["hidden tensor also a graph output"] = model(mlp(), BASE, outputs=[
        helper.make_tensor_value_info("y", 1, None), helper.make_tensor_value_info("a", 1, None)]), {}
    g["outputs (ArgMax label, logits)"] = model([*mlp(), N("ArgMax", ["y"], ["label"], axis=1)], BASE, outputs=[
        helper.make_tensor_value_info("label", 7, None), helper.make_tensor_value_info("y", 1, None)]), \
        {"out_index": 1}
    g["outputs (logits, probabilities)"] = model([*mlp(), N("Softmax", ["y"], ["p"], axis=1)], BASE, outputs=[
        helper.make_tensor_value_info("y", 1, None), helper.make_tensor_value_info("p", 1, None)]), {}
    g["two inputs"] = model([N("Add", ["x", "x2"], ["s"]), *mlp(source="s")], BASE, inputs=[
        X12, helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 12])]), {}
    g["Dropout with a stored ratio between layers"] = model(mlp(between=[N("Dropout", ["a", "r"], ["a2"])]),
                                                            {**BASE, "r": np.float32(0.5)}), {}
    stats = {"g": R.uniform(0.5, 1.5, 6), "be": R.normal(size=6), "mu": R.normal(size=6), "var": R.uniform(0.5, 1.5, 6)}
    stats = {k: v.astype(np.float32) for k, v in stats.items()}
    g["BatchNormalization after fc1"] = model(mlp([N("Gemm", ["x", "w1", "b1"], ["h0"], name="fc1"), N(
        "BatchNormalization", ["h0", "g", "be", "mu", "var"], ["h"], epsilon=1e-3)]), {**BASE, **stats}), {}
    g["LayerNormalization after fc1 (opset 17)"] = model(mlp([N("Gemm", ["x", "w1", "b1"], ["h0"], name="fc1"), N(
        "LayerNormalization", ["h0", "g", "be"], ["h"], axis=-1)]), {**BASE, **stats}, opset=17), {}
    g["Clip(0, 6) (ReLU6) between layers"] = model(mlp(between=[N("Clip", ["a", "lo", "hi"], ["a2"])]), {
        **BASE, "lo": np.float32(0), "hi": np.float32(6)}), {}
    g["one square weight shared by two layers (tied)"] = model([*mlp(between=[
        N("Gemm", ["a", "sq", "bs"], ["h2"]), N("Relu", ["h2"], ["r2"]), N("Gemm", ["r2", "sq", "bs"], ["h3"]),
        N("Relu", ["h3"], ["a2"])])], {**BASE, "sq": R.normal(size=(6, 6)).astype(np.float32) / 3,
                                       "bs": np.zeros(6, np.float32)}), {}
    g["MatMul with a 1-D weight"] = model([N("MatMul", ["x", "v"], ["h"]), N("Unsqueeze", ["h", "ax"], ["y"])],
                                          {"v": R.normal(size=12).astype(np.float32),
                                           "ax": np.array([1], np.int64)}), {}
    return g
