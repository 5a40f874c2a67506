"""Which trainable activation (edge_runtime/kernel/activations.py) follows a dense layer in a
source graph, if any.

One node: Relu, Tanh, Sigmoid, LeakyRelu (its alpha is the layer's negative_slope), PRelu with
one stored slope (or one per feature, all equal: a LeakyRelu), or Gelu (opset 20) with
approximate = "none". Or GELU spelled out, as torch exports nn.GELU() below
opset 20: x -> Div(x, sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5, in whichever order and
with Mul by 1/sqrt 2 or by 0.5 first. Rather than matching one exporter's spelling, any small
region of elementwise nodes that starts at the layer's output and ends in one tensor is run in
onnxruntime on a range of inputs, and it is GELU when it computes x Phi(x) there to 1e-5. The
tanh approximation (nn.GELU(approximate="tanh")) differs from that by up to 5e-4, fails the
check, and stays in the frozen backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedge.edge_runtime.kernel.activations import DEFAULT_NEGATIVE_SLOPE, activate

from .onnx_probe import quiet_session

ONE_NODE = {"Relu": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyRelu": "leaky_relu", "Gelu": "gelu"}
SPELLED_OUT_OPS = frozenset({"Div", "Mul", "Add", "Sub", "Erf", "Pow", "Sqrt", "Tanh", "Identity"})
MAX_SPELLED_OUT = 10  # nodes; torch's erf GELU is 5, its tanh approximation 8
PROBE = np.linspace(-8.0, 8.0, 161, dtype=np.float32)  # where the region must agree with x Phi(x)
TOLERANCE = 1e-5
TRAINABLE = "Relu, Tanh, Sigmoid, LeakyRelu or GELU (erf)"  # for messages


@dataclass(frozen=True)
class Activation:
    name: str  # kernel/activations.ACTIVATIONS
    negative_slope: float
    output: str  # the tensor after it


def match_activation(graph, tensor: str, users: list[onnx.NodeProto]) -> Activation | None:
    """The trainable activation applied to `tensor` (whose consumers are `users`), or None.
    `graph`: onnx_import._Graph (consts, consumers, outputs, model)."""
    if len(users) == 1 and users[0].op_type in ONE_NODE:
        return one_node_activation(users[0])
    if len(users) == 1 and users[0].op_type == "PRelu" and users[0].input[0] == tensor:
        return _prelu(graph, users[0])
    region = _elementwise_region(graph, tensor)
    while region is not None:  # where the branches meet, then each stored-number step after it
        nodes, end = region
        if _computes_gelu(graph, tensor, nodes, end):
            return Activation("gelu", DEFAULT_NEGATIVE_SLOPE, end)
        region = _one_more_step(graph, nodes, end)
    return None


def _one_more_step(graph, nodes: list[onnx.NodeProto], end: str) -> tuple[list[onnx.NodeProto], str] | None:
    """The region grown by `end`'s one consumer, when that is elementwise with stored numbers as
    its other inputs (torch's x (1 + erf(x / sqrt 2)) meets before its * 0.5)."""
    users = graph.consumers.get(end, [])
    if len(nodes) >= MAX_SPELLED_OUT or end in graph.outputs or len(users) != 1:
        return None
    node = users[0]
    if node.op_type not in SPELLED_OUT_OPS or len(node.output) != 1 or any(
            i != end and i not in graph.consts for i in node.input if i):
        return None
    return [*nodes, node], node.output[0]


def one_node_activation(node: onnx.NodeProto) -> Activation | None:
    """The activation of one node of ONE_NODE's ops (None for one the tail cannot train, or another op)."""
    if node.op_type not in ONE_NODE:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "LeakyRelu":
        # the shortest decimal of the float32 attribute (0.2, not 0.20000000298): the spec's value
        slope = float(str(np.float32(attrs.get("alpha", DEFAULT_NEGATIVE_SLOPE))))
        if not 0 <= slope <= 1:  # a slope the spec refuses (LayerSpec): the layer stays frozen
            return None
        return Activation("leaky_relu", slope, node.output[0])
    if node.op_type == "Gelu" and attrs.get("approximate", b"none") not in (b"none", "none"):
        return None  # the tanh approximation is not x Phi(x)
    return Activation(ONE_NODE[node.op_type], DEFAULT_NEGATIVE_SLOPE, node.output[0])


def _prelu(graph, node: onnx.NodeProto) -> Activation | None:
    """A PRelu whose stored slope is one number (nn.PReLU()), or one per feature all equal: that
    is LeakyRelu with that slope. Slopes that differ, or that would broadcast the (N, units)
    output to another shape, are no one leaky_relu: the layer stays frozen."""
    slope = graph.consts.get(node.input[1]) if len(node.input) > 1 else None
    if slope is None or slope.size == 0 or slope.ndim > 2 or slope.ndim == 2 and slope.shape[0] != 1:
        return None
    first = np.float32(slope.flat[0])
    if not np.all(np.asarray(slope, np.float32) == first):
        return None
    return one_node_activation(helper.make_node("LeakyRelu", [node.input[0]], [node.output[0]], alpha=float(first)))


def _elementwise_region(graph, start: str) -> tuple[list[onnx.NodeProto], str] | None:
    """The nodes computed from `start` and stored numbers only, by elementwise ops, up to the
    first tensor where they all meet again (the one tensor the rest of the graph reads)."""
    nodes: list[onnx.NodeProto] = []
    inside: set[int] = set()
    known = {start}
    for _ in range(MAX_SPELLED_OUT):
        open_ = sorted(t for t in known if t in graph.outputs
                       or any(id(c) not in inside for c in graph.consumers.get(t, [])))
        if nodes and len(open_) == 1 and open_[0] != start:
            return nodes, open_[0]
        added = False
        for t in open_:
            for node in graph.consumers.get(t, []):
                if id(node) in inside or node.op_type not in SPELLED_OUT_OPS or len(node.output) != 1:
                    continue
                if all(i in known or i in graph.consts for i in node.input if i):
                    nodes.append(node)
                    inside.add(id(node))
                    known.add(node.output[0])
                    added = True
        if not added:
            return None
    return None


def _computes_gelu(graph, start: str, nodes: list[onnx.NodeProto], end: str) -> bool:
    """Run the region alone in onnxruntime on PROBE and compare it with x Phi(x)."""
    needed = {i for n in nodes for i in n.input if i and i in graph.consts and i != start}
    inits = [numpy_helper.from_array(np.asarray(graph.consts[name]), name) for name in sorted(needed)]
    region = helper.make_graph(nodes, "fedge-activation-probe",
                               [helper.make_tensor_value_info(start, TensorProto.FLOAT, [len(PROBE)])],
                               [helper.make_tensor_value_info(end, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(region, opset_imports=graph.model.opset_import)
    model.ir_version = graph.model.ir_version
    try:
        (got,) = quiet_session(model).run(None, {start: PROBE})
    except Exception:  # noqa: BLE001 - a region onnxruntime refuses alone is not a GELU we can train
        return False
    want = activate("gelu", PROBE.astype(np.float64))
    got = np.asarray(got, np.float64)
    return got.shape == want.shape and bool(np.all(np.abs(got - want) <= TOLERANCE * (1 + np.abs(want))))
