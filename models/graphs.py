"""ONNX graphs for a ModelSpec, in standard ops only.

    backbone.onnx     x (N, *input_shape) -> z (N, *embedding_shape); frozen prefix, cached on device
    eval.onnx         z + trainable params -> logits_global / logits_personal
    train_step_*.onnx one optimizer step: forward, hand-written backward, update, in one graph

Train-step inputs (all float32 unless noted; scalars have shape []):
    z (N, d), y (N,) int64
    every trainable param P, and its optimizer state:
        sgd:   P.momentum_buffer
        adamw: P.exp_avg, P.exp_avg_sq, and one scalar `step` (1-based, after this step)
    hyperparameters: lr, weight_decay, mu, and momentum (sgd) or beta1, beta2, eps (adamw)
    every shared param P also has P.global (FedProx anchor) and P.correction (SCAFFOLD c - c_i)
Outputs: P.new and each state S.new, and `loss` (mean cross-entropy summed over heads).

The gradient each param sees is  dL/dP + mu * (P - P.global) + P.correction  for shared params
and dL/dP for personal ones, so mu = 0 and correction = 0 is plain FedAvg local training.

Optimizers follow torch.optim semantics exactly:
    SGD:   g += wd * P;  buf = momentum * buf + g;  P -= lr * buf          (dampening 0, no nesterov)
    AdamW: P *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
           P -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from .onnx_builder import GraphBuilder
from .params import param_infos
from .spec import LayerSpec, ModelSpec

OPTIMIZERS = ("sgd", "adamw")
ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyRelu"}  # one ONNX op each
INV_SQRT2, INV_SQRT_2PI = 1 / math.sqrt(2.0), 1 / math.sqrt(2.0 * math.pi)


def activate(gb: GraphBuilder, layer: LayerSpec, pre: str) -> str:
    """out = the layer's activation of pre, as kernel/activations.py defines it."""
    if layer.activation == "none":
        return pre
    if layer.activation == "gelu":  # x Phi(x); ONNX has Gelu only from opset 20, Erf since 9
        return gb.mul(pre, _normal_cdf(gb, pre))
    if layer.activation == "leaky_relu":
        return gb.op("LeakyRelu", [pre], alpha=layer.negative_slope)
    return gb.op(ACTIVATION_OPS[layer.activation], [pre])


def _normal_cdf(gb: GraphBuilder, x: str) -> str:
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2."""
    return gb.mul(gb.const(0.5), gb.add(gb.const(1.0), gb.op("Erf", [gb.mul(x, gb.const(INV_SQRT2))])))


def _activation_backward(gb: GraphBuilder, layer: LayerSpec, dh: str, pre: str, out: str) -> str:
    """d loss / d pre from d loss / d out, out = activation(pre)."""
    activation, slope = layer.activation, layer.negative_slope
    if activation == "relu":
        return gb.mul(dh, gb.op("Cast", [gb.op("Greater", [pre, gb.const(0.0)])], to=TensorProto.FLOAT))
    if activation == "tanh":  # tanh' = 1 - tanh^2
        return gb.mul(dh, gb.sub(gb.const(1.0), gb.mul(out, out)))
    if activation == "sigmoid":  # sigmoid' = s (1 - s)
        return gb.mul(dh, gb.mul(out, gb.sub(gb.const(1.0), out)))
    if activation == "leaky_relu":  # 1 for x > 0, the slope otherwise (torch at 0)
        positive = gb.op("Cast", [gb.op("Greater", [pre, gb.const(0.0)])], to=TensorProto.FLOAT)
        return gb.mul(dh, gb.add(gb.const(slope), gb.mul(positive, gb.const(1.0 - slope))))
    if activation == "gelu":  # (x Phi(x))' = Phi(x) + x phi(x), phi(x) = e^(-x^2/2) / sqrt(2 pi)
        density = gb.mul(gb.const(INV_SQRT_2PI), gb.op("Exp", [gb.mul(gb.const(-0.5), gb.mul(pre, pre))]))
        return gb.mul(dh, gb.add(_normal_cdf(gb, pre), gb.mul(pre, density)))
    return dh


def optimizer_state_names(optimizer: str, param: str) -> tuple[str, ...]:
    if optimizer == "sgd":
        return (f"{param}.momentum_buffer",)
    if optimizer == "adamw":
        return (f"{param}.exp_avg", f"{param}.exp_avg_sq")
    raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")


def hyper_names(optimizer: str) -> tuple[str, ...]:
    common = ("lr", "weight_decay", "mu")
    return common + (("momentum",) if optimizer == "sgd" else ("beta1", "beta2", "eps", "step"))


# ---------------------------------------------------------------------------------- backbone


def build_backbone(spec: ModelSpec, values: dict[str, np.ndarray]) -> onnx.ModelProto | None:
    """The frozen prefix as its own graph, or None when the first layer is trainable."""
    depth = spec.backbone_depth
    if spec.onnx:
        from .onnx_prefix import extract_prefix

        prefix = extract_prefix(spec)
        if prefix is not None:  # the source's graph up to the cut, then any frozen tail layers
            if depth:
                from .export import append_dense, dense_tail, rename_output

                rename_output(prefix, "z", "fedge_cut")
                frozen = dense_tail(spec, values, head=None, which=slice(0, depth))
                append_dense(prefix, "fedge_cut", frozen, "z", prefix="fedge_frozen_")
                prefix.graph.output[0].name = "z"
                prefix.graph.output[0].type.tensor_type.shape.dim[1].dim_value = spec.embedding_shape()[0]
            return prefix
    if depth == 0:
        return None
    gb = GraphBuilder(f"{spec.name}-backbone")
    h = gb.input("x", ["N", *spec.input_shape])
    for layer in spec.layers[:depth]:
        h = _frozen_layer(gb, layer, values, h)
    if len(spec.embedding_shape()) != 1:
        h = gb.op("Flatten", [h], axis=1)
    gb.op_to("Identity", [h], "z")
    gb.output("z", ["N", *spec.embedding_shape()])
    return gb.model(doc=f"fedge backbone of {spec.name}")


def _frozen_layer(gb: GraphBuilder, layer: LayerSpec, values: dict[str, np.ndarray], h: str) -> str:
    if layer.kind == "conv":
        w = gb.initializer(f"{layer.name}.weight", values[f"{layer.name}.weight"])
        b = gb.initializer(f"{layer.name}.bias", values[f"{layer.name}.bias"])
        pad = layer.kernel // 2
        h = gb.op("Conv", [h, w, b], kernel_shape=[layer.kernel] * 2, pads=[pad] * 4, strides=[1, 1])
    elif layer.kind == "pool":
        h = gb.op("AveragePool", [h], kernel_shape=[2, 2], strides=[2, 2])
    elif layer.kind == "gap":
        h = gb.op("Flatten", [gb.op("GlobalAveragePool", [h])], axis=1)
    elif layer.kind == "flatten":
        h = gb.op("Flatten", [h], axis=1)
    else:
        w = gb.initializer(f"{layer.name}.weight", values[f"{layer.name}.weight"])
        b = gb.initializer(f"{layer.name}.bias", values[f"{layer.name}.bias"])
        h = gb.add(gb.matmul(h, w), b)
    return activate(gb, layer, h)


# ----------------------------------------------------------------------------- forward part


@dataclass
class _LayerTrace:
    layer: LayerSpec
    x: str  # layer input (N, in)
    pre: str  # pre-activation (N, out)
    out: str  # after the activation (N, out)
    weight: str
    lora_u: str | None  # x @ A (N, r), LoRA layers only
    lora_a: str | None
    lora_b: str | None


def emit_forward(
    gb: GraphBuilder, spec: ModelSpec, values: dict[str, np.ndarray], z: str, trainable: dict[str, str]
) -> tuple[str, list[_LayerTrace], dict[str, str]]:
    """Forward from embeddings z. `trainable` maps param name -> graph value; frozen params
    become initializers. Returns (features, traces for backward, {head: logits})."""

    def param(name: str) -> str:
        if name in trainable:
            return trainable[name]
        if not any(init.name == name for init in gb.initializers):
            gb.initializer(name, values[name])
        return name

    h = z
    traces = []
    for layer in spec.layers[spec.backbone_depth :]:
        w, b = param(f"{layer.name}.weight"), param(f"{layer.name}.bias")
        pre = gb.add(gb.matmul(h, w), b)
        u = a = bb = None
        if layer.mode == "lora":
            a, bb = param(f"{layer.name}.lora_a"), param(f"{layer.name}.lora_b")
            u = gb.matmul(h, a)
            pre = gb.add(pre, gb.mul(gb.matmul(u, bb), gb.const(spec.lora_scale)))
        out = activate(gb, layer, pre)
        traces.append(_LayerTrace(layer, h, pre, out, w, u, a, bb))
        h = out
    logits = {}
    for head in heads_of(spec):
        logits[head] = gb.add(gb.matmul(h, param(f"head_{head}.weight")), param(f"head_{head}.bias"))
    return h, traces, logits


def heads_of(spec: ModelSpec) -> tuple[str, ...]:
    return {"dual": ("global", "personal"), "global": ("global",), "personal": ("personal",)}[spec.head]


def emit_cross_entropy(gb: GraphBuilder, logits: str, y: str) -> str:
    """Mean softmax cross-entropy, a scalar."""
    logp = gb.op("LogSoftmax", [logits], axis=1)
    picked = gb.op("GatherElements", [logp, gb.op("Unsqueeze", [y, gb.const([1], np.int64)])], axis=1)
    return gb.op("Neg", [gb.op("ReduceMean", [picked], keepdims=0)])


# ---------------------------------------------------------------------------------- eval


def build_eval(spec: ModelSpec, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    gb = GraphBuilder(f"{spec.name}-eval")
    z = gb.input("z", ["N", *spec.embedding_shape()])
    trainable = {p.name: gb.input(p.name, list(p.shape)) for p in param_infos(spec) if p.role != "frozen"}
    _, _, logits = emit_forward(gb, spec, values, z, trainable)
    for head, value in logits.items():
        gb.op_to("Identity", [value], f"logits_{head}")
        gb.output(f"logits_{head}", ["N", spec.num_classes])
    return gb.model(doc=f"fedge eval graph of {spec.name}")


# ---------------------------------------------------------------------------- train step


def build_train_step(spec: ModelSpec, values: dict[str, np.ndarray], optimizer: str) -> onnx.ModelProto:
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    infos = [p for p in param_infos(spec) if p.role != "frozen"]
    gb = GraphBuilder(f"{spec.name}-train-step-{optimizer}")
    z = gb.input("z", ["N", *spec.embedding_shape()])
    y = gb.input("y", ["N"], TensorProto.INT64)
    trainable = {p.name: gb.input(p.name, list(p.shape)) for p in infos}
    state = {s: gb.input(s, list(p.shape)) for p in infos for s in optimizer_state_names(optimizer, p.name)}
    hyper = {h: gb.input(h, []) for h in hyper_names(optimizer)}
    anchors = {p.name: (gb.input(f"{p.name}.global", list(p.shape)), gb.input(f"{p.name}.correction", list(p.shape)))
               for p in infos if p.role == "shared"}

    feats, traces, logits = emit_forward(gb, spec, values, z, trainable)
    grads, loss = _emit_backward(gb, spec, z, y, feats, traces, logits, trainable)

    for p in infos:
        g = grads[p.name]
        if p.name in anchors:
            anchor, correction = anchors[p.name]
            prox = gb.mul(hyper["mu"], gb.sub(trainable[p.name], anchor))
            g = gb.add(gb.add(g, prox), correction)
        _emit_update(gb, optimizer, p.name, list(p.shape), trainable[p.name], g, state, hyper)
    gb.op_to("Identity", [loss], "loss")
    gb.output("loss", [])
    return gb.model(doc=f"fedge portable train step ({optimizer}) of {spec.name}")


def _emit_backward(gb, spec, z, y, feats, traces, logits, trainable):
    n = gb.op("Cast", [gb.op("Gather", [gb.op("Shape", [z]), gb.const(0, np.int64)], axis=0)], to=TensorProto.FLOAT)
    onehot = gb.op("OneHot", [y, gb.const(spec.num_classes, np.int64), gb.const([0.0, 1.0])], axis=-1)
    loss = None
    grads: dict[str, str] = {}
    dfeats = None
    for head, value in logits.items():
        ce = emit_cross_entropy(gb, value, y)
        loss = ce if loss is None else gb.add(loss, ce)
        dlogits = gb.div(gb.sub(gb.op("Softmax", [value], axis=1), onehot), n)  # (N, C)
        w = f"head_{head}.weight"
        grads[w] = gb.matmul(gb.transpose(feats), dlogits)
        grads[f"head_{head}.bias"] = gb.sum_rows(dlogits)
        back = gb.matmul(dlogits, gb.transpose(trainable[w]))
        dfeats = back if dfeats is None else gb.add(dfeats, back)

    dh = dfeats
    for i in range(len(traces) - 1, -1, -1):
        t = traces[i]
        dpre = _activation_backward(gb, t.layer, dh, t.pre, t.out)
        name = t.layer.name
        if t.layer.mode in ("shared", "personal"):
            grads[f"{name}.weight"] = gb.matmul(gb.transpose(t.x), dpre)
            grads[f"{name}.bias"] = gb.sum_rows(dpre)
        du = None
        if t.layer.mode == "lora":
            scale = gb.const(spec.lora_scale)
            grads[f"{name}.lora_b"] = gb.mul(gb.matmul(gb.transpose(t.lora_u), dpre), scale)
            du = gb.mul(gb.matmul(dpre, gb.transpose(t.lora_b)), scale)  # (N, r)
            if f"{name}.lora_a" in trainable:  # frozen when spec.lora_train_a is false
                grads[f"{name}.lora_a"] = gb.matmul(gb.transpose(t.x), du)
        if i == 0:
            break  # nothing trainable below the first trainable-part layer
        dh = gb.matmul(dpre, gb.transpose(t.weight))
        if du is not None:
            dh = gb.add(dh, gb.matmul(du, gb.transpose(t.lora_a)))
    return grads, loss


def _emit_update(gb, optimizer, name, shape, p, g, state, hyper):
    lr, wd = hyper["lr"], hyper["weight_decay"]
    if optimizer == "sgd":
        g = gb.add(g, gb.mul(wd, p))
        buf_name = f"{name}.momentum_buffer"
        buf = gb.add(gb.mul(hyper["momentum"], state[buf_name]), g)
        gb.op_to("Identity", [buf], f"{buf_name}.new")
        gb.op_to("Sub", [p, gb.mul(lr, buf)], f"{name}.new")
        gb.output(f"{buf_name}.new", shape)
        gb.output(f"{name}.new", shape)
        return
    b1, b2, eps, step = hyper["beta1"], hyper["beta2"], hyper["eps"], hyper["step"]
    one = gb.const(1.0)
    decayed = gb.mul(p, gb.sub(one, gb.mul(lr, wd)))
    m_name, v_name = f"{name}.exp_avg", f"{name}.exp_avg_sq"
    m = gb.add(gb.mul(b1, state[m_name]), gb.mul(gb.sub(one, b1), g))
    v = gb.add(gb.mul(b2, state[v_name]), gb.mul(gb.sub(one, b2), gb.mul(g, g)))
    bc1 = gb.sub(one, gb.op("Pow", [b1, step]))
    bc2 = gb.sub(one, gb.op("Pow", [b2, step]))
    denom = gb.add(gb.div(gb.op("Sqrt", [v]), gb.op("Sqrt", [bc2])), eps)
    gb.op_to("Sub", [decayed, gb.mul(gb.div(lr, bc1), gb.div(m, denom))], f"{name}.new")
    gb.op_to("Identity", [m], f"{m_name}.new")
    gb.op_to("Identity", [v], f"{v_name}.new")
    for out in (f"{name}.new", f"{m_name}.new", f"{v_name}.new"):
        gb.output(out, shape)
