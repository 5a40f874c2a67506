"""Import a pretrained ONNX model: a frozen backbone plus a trainable dense tail.

    source graph:   x -> [anything ONNX Runtime runs] -> cut -> dense -> relu -> ... -> dense -> [softmax ...]
                                backbone.onnx                 spec layers fc1..fcK          classifier
                                (frozen, cached)              (pretrained initial values)   (head: kept or new)

The cut is a tensor of shape (N, features). Given by name, or found automatically: the input of
the first dense layer (Gemm, or MatMul with an optional Add) from which the rest of the graph is
a chain of dense layers with Relu, Tanh, Sigmoid, LeakyRelu or GELU between them
(onnx_activation.py), up to prediction post-processing (Softmax, ArgMax, ...), which is dropped. Weights follow the spec
convention y = x @ W + b with W (in, out): Gemm's transB and alpha/beta are folded in, and so are
a BatchNormalization after a layer (onnx_fold.py) and a Mul or Div by one stored number after it
(a classifier's temperature, logits / T).

The backbone is cut out as onnx.utils.Extractor would (onnx_extract.py), its input is
renamed x and given a free batch dimension, and its output is the cut flattened to z (N, d).
It keeps the source's opset and ops: Conv, BatchNormalization, attention, whatever ONNX Runtime
runs, since devices only ever run it forward.

Anything the importer cannot express raises OnnxImportError naming the node and why.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fedge.edge_runtime.kernel.activations import DEFAULT_NEGATIVE_SLOPE

from .import_options import ImportOptions
from .onnx_activation import TRAINABLE, match_activation
from .onnx_casts import after_exact_casts, with_dense_float_types
from .onnx_cut import check_cut_type, no_tail_error
from .onnx_dense import DENSE_OPS, dense_operands
from .onnx_einsum import einsum_layer
from .onnx_finite import check_backbone_finite
from .onnx_fold import fold_batchnorm
from .onnx_gemm import fused_activation, gemm_weights, is_gemm, per_output_bias, refuse_malformed_fused
from .onnx_head import check_normalizers, check_post_processing, sigmoid_follows
from .onnx_linear import (
    AFTER_PROBABILITIES,
    check_sklearn_scores,
    is_linear_classifier,
    is_ml_model,
    read_linear_classifier,
)
from .onnx_new_head import cut_features
from .onnx_notice import backbone_tie_notice, check_roles, frozen_notice, tied_notice
from .onnx_source import OnnxImportError, Unreadable, load_source, node_label, source_input_shape, stored_tensors
from .onnx_transposed import transposed_layer
from .spec import LayerSpec, ModelSpec

PASS_THROUGH = ("Identity", "Dropout")  # inference no-ops between layers
log = logging.getLogger("fedge.models")

SHAPE_OPS = ("Cast", "Identity", "Reshape", "Flatten", "Squeeze")
POST_PROCESSING = ("Softmax", "LogSoftmax", "ArgMax", "ZipMap", "ArrayFeatureExtractor", *SHAPE_OPS)


@dataclass(frozen=True)
class DenseLayer:
    node: str  # name (or op and output) of the ONNX node that holds the weight
    output: str  # tensor after the layer (and its activation)
    weight: np.ndarray  # (in, out)
    bias: np.ndarray  # (out,)
    activation: str  # kernel/activations.ACTIVATIONS
    negative_slope: float = DEFAULT_NEGATIVE_SLOPE  # leaky_relu's
    gives: str = "logits"  # "probabilities": a LinearClassifier's softmax(x @ W + b) (onnx_linear.py); "sigmoid":
    # a one-output FusedGemm's sigmoid(x @ W + b), a binary classifier's p (onnx_gemm.py)
    labels: np.ndarray | None = None  # the class labels the node names its outputs by, if it does

    def __post_init__(self) -> None:
        # A NaN or Inf weight trains to NaN everywhere, and the whole-model check cannot see it
        # (the source gives non-finite values too, so the check is skipped): refused here.
        for what, value in (("weight", self.weight), ("bias", self.bias)):
            if not np.all(np.isfinite(value)):
                raise OnnxImportError(f"{self.node}: its {what} holds {int(np.size(value) - np.isfinite(value).sum())} "
                                      f"NaN or Inf value(s); a model with them cannot be fine-tuned: fix its weights")



class _Graph:
    """Lookups over a source graph: constants, consumers, producers, the one float input."""

    def __init__(self, model: onnx.ModelProto, where: str):
        self.model, self.where = model, where
        g = model.graph
        self.consts: dict[str, np.ndarray] = {k: numpy_helper.to_array(t) for k, t in stored_tensors(g).items()}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer = {o: n for n in g.node for o in n.output}
        # Shape and Size read a tensor's shape, never the values the tail trains: torch's x.view(x.size(0), -1)
        # once froze every dense layer that read x, and logits.flatten() refused the model
        for node in (n for n in g.node if n.op_type not in ("Shape", "Size")):
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in g.output}
        inputs = [i for i in g.input if i.name not in self.consts]
        if not inputs and g.input:  # the input's default value (an initializer of its name) would read as a weight
            raise OnnxImportError(f"{where}: every graph input {[i.name for i in g.input][:5]} has a stored value "
                                  "(an initializer of the same name), so none is the input fedge feeds; re-export "
                                  "with the model's input free of an initializer")
        if len(inputs) != 1:
            raise OnnxImportError(f"{where}: the model has {len(inputs)} inputs {[i.name for i in inputs]}; "
                                  "fedge imports models with one input tensor "
                                  "(extra state or config inputs are not supported)")
        self.input = inputs[0]
        refuse_malformed_fused(g, where)
        elem = self.input.type.tensor_type.elem_type
        if elem != TensorProto.FLOAT:  # devices feed float32 features: a Cast in the graph would not help
            raise OnnxImportError(f"{where}: input {self.input.name!r} is {TensorProto.DataType.Name(elem)}, not "
                                  "FLOAT (float32); re-export with a float32 input (torch: a float32 example; "
                                  "skl2onnx: to_onnx(model, X.astype(np.float32)))")
        shapes = onnx.shape_inference.infer_shapes(model).graph
        known = (*shapes.value_info, *shapes.input, *shapes.output)
        self.ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in known if v.type.tensor_type.HasField("shape")}
        self.types = with_dense_float_types({v.name: v.type.tensor_type.elem_type for v in known
                                             if v.type.HasField("tensor_type")}, g.node, self.consts)

    def follow(self, tensor: str) -> tuple[str, list[onnx.NodeProto]]:
        """Skip inference no-ops and exact Casts (onnx_casts.py); return the tensor reached and its consumers."""
        while True:
            users = self.consumers.get(tensor, [])
            if len(users) == 1 and users[0].op_type in PASS_THROUGH:
                tensor = users[0].output[0]
            elif len(users) == 1 and (after := after_exact_casts(self.types, self.consumers, tensor, users[0])):
                tensor = after
            else:
                return tensor, users

    def downstream(self, tensor: str) -> Iterator[onnx.NodeProto]:
        """Every node computed from `tensor`, nearest first."""
        seen, todo = {tensor}, deque([tensor])
        while todo:
            for node in self.consumers.get(todo.popleft(), []):
                yield node
                todo.extend(o for o in node.output if o not in seen)
                seen.update(node.output)

    def class_labels(self, logits: str) -> np.ndarray | None:
        """The labels the source maps its classifier's outputs to (scikit-learn's classes_, kept
        in an ArrayFeatureExtractor after the ArgMax), if it does."""
        return next((self.consts[n.input[0]] for n in self.downstream(logits)
                     if n.op_type == "ArrayFeatureExtractor" and n.input[0] in self.consts), None)

    def const(self, name: str, node: onnx.NodeProto, what: str) -> np.ndarray:
        if name not in self.consts:
            raise OnnxImportError(f"{self.where}: {node_label(node)}: its {what} {name!r} is computed, not a "
                                  "constant; only dense layers with stored weights can be trained")
        return np.asarray(self.consts[name], np.float32)


def _dense(g: _Graph, node: onnx.NodeProto, x: str, any_rank: bool = False) -> DenseLayer:
    """The dense layer that starts at `node` (which consumes x), with its bias and activation;
    or at a Transpose of x that starts (W @ x^T + b)^T (onnx_transposed.py), or at an Einsum (onnx_einsum.py).
    any_rank: read a MatMul of a 3-D x too (a projection of each position, which the tail refuses)."""
    start = transposed_layer(g, x, node) or einsum_layer(g, x, node)
    if isinstance(start, Unreadable) and dense_operands(start.node, g.consts, g.producer):  # W @ x^T + b per example
        raise OnnxImportError(f"{g.where}: {node_label(start.node)}: {start.why}")  # named by its MatMul or Einsum
    if (start is None or isinstance(start, Unreadable)) and node.op_type not in DENSE_OPS and not is_gemm(node):
        raise OnnxImportError(f"{g.where}: {node_label(node)} after {x!r}: the trainable tail takes dense layers "
                              f"(Gemm, or MatMul + Add) with {TRAINABLE} only; cut later, or after this node")
    if start is not None:
        node, w, b, out = start  # named by its MatMul, as the notice names dense layers
    label = node_label(node)
    if start is None and node.input[0] != x:
        raise OnnxImportError(f"{g.where}: {label}: {x!r} is its weight operand, not its input")
    if start is None and not any_rank and g.ranks.get(x, 2) != 2:  # torch Linear on (N, seq, d), as Einsum
        raise OnnxImportError(f"{g.where}: {label}: reads {x!r} as {g.ranks[x]}-D (a projection of each position); "
                              "the tail's layers take x (batch, features): cut after the Flatten or global pooling")
    if start is None:
        w, out = g.const(node.input[1], node, "weight"), node.output[0]
    if w.ndim != 2:
        raise OnnxImportError(f"{g.where}: {label}: weight has shape {w.shape}; dense layers need a matrix")
    fused = fused_activation(g.where, node) if start is None else None  # ORT's FusedGemm: activation inside
    if start is None and is_gemm(node):
        w, b = gemm_weights(g, node, w)
    else:
        b = np.zeros(w.shape[1], np.float32) if start is None else b
        out, users = g.follow(out)
        if len(users) == 1 and users[0].op_type == "Add":
            add = users[0]
            other = [n for n in add.input if n != out]
            if len(other) == 1 and other[0] in g.consts:
                b, out = b + per_output_bias(g.where, add, g.consts[other[0]].astype(np.float32), w.shape[1]), \
                    add.output[0]
    out, users = g.follow(out)
    if not fused and len(users) == 1 and (folded := fold_batchnorm(g.consts, users[0], w.shape[1], w, b)) is not None:
        (w, b), (out, users) = folded, g.follow(users[0].output[0])  # Linear + BatchNorm1d: one dense layer
    scale = users[0] if not fused and len(users) == 1 and users[0].op_type in ("Mul", "Div") else None
    s = next((g.consts[n] for n in scale.input if n != out and n in g.consts), None) if scale else None
    if s is not None and s.size == 1 and s.ndim <= 2 and float(s.flat[0]) != 0 and (
            scale.op_type == "Mul" or scale.input[0] == out):  # a temperature, logits / T: folded into W and b
        k = np.float32(s.flat[0] if scale.op_type == "Mul" else 1 / s.flat[0])
        w, b = w * k, b * k
        out, users = g.follow(scale.output[0])
    activation, slope = "none", DEFAULT_NEGATIVE_SLOPE
    found = fused or match_activation(g, out, users)
    # a one-output layer's Sigmoid is a binary classifier's (parse_tail), not a hidden activation
    binary = found is not None and found.name == "sigmoid" and w.shape[1] == 1
    if found is not None and not (binary and not fused):
        activation, slope, (out, _) = found.name, found.negative_slope, g.follow(found.output)
    try:
        return DenseLayer(node.name or f"{node.op_type}:{node.output[0]}", out, np.ascontiguousarray(w), b.copy(),
                          "none" if binary else activation, slope, "sigmoid" if binary and fused else "logits")
    except OnnxImportError as exc:  # its NaN/Inf refusal knows the node, not the file
        raise OnnxImportError(f"{g.where}: {exc}") from None


def _read_layer(g: _Graph, node: onnx.NodeProto, any_rank: bool = False) -> DenseLayer:
    """The dense layer of a dense node (onnx_dense.py), read from its first node (for MatMul(W,
    Transpose(x)), the Transpose): what the frozen notice tries, to say why it is not in the tail."""
    x, _, start = dense_operands(node, g.consts, g.producer)
    return _dense(g, start, x, any_rank)


def _reads(g: _Graph, node: onnx.NodeProto) -> bool:
    """Whether the tail could read a dense node (onnx_dense.py) as a layer, at any rank of its input:
    a Softmax before a 3-D MatMul (a mixture of experts' gate) is inside the network, not the
    classifier's post-processing, though the tail refuses that MatMul for its rank."""
    try:
        return bool(_read_layer(g, node, any_rank=True))
    except OnnxImportError:
        return False


def parse_tail(g: _Graph, cut: str) -> list[DenseLayer]:
    """The chain of dense layers from `cut` to the model's output; the last one is the classifier."""
    if g.ranks.get(cut, 2) != 2:
        raise OnnxImportError(f"{g.where}: cut tensor {cut!r} has rank {g.ranks[cut]}; the dense tail needs "
                              "(N, features): cut after the Flatten or global pooling")
    layers: list[DenseLayer] = []
    tensor, users = g.follow(cut)
    while True:
        binary = bool(layers) and layers[-1].weight.shape[1] == 1 and (
            layers[-1].gives == "sigmoid" or sigmoid_follows(g.consumers, tensor))
        if tensor in g.outputs and not users or users and layers and all(u.op_type in POST_PROCESSING for u in users) \
                or binary:
            # A layer the tail can read further on means this was no classifier (a Softmax inside the
            # network: attention, gating), so the first READABLE one counts: an unreadable projection
            # between them refused the whole model. Only unreadable ones after: post-processing's to refuse.
            # Nor is a scikit-learn model there (Gemm -> Reshape -> LinearClassifier): --classes dropped both, silently.
            dense = [n for n in g.downstream(tensor) if dense_operands(n, g.consts, g.producer) or is_ml_model(n)]
            readable = next((n for n in dense if is_ml_model(n) or _reads(g, n)), None)  # each node read once
            later = readable or (dense[0] if dense else None)
            if later is not None and (not binary and all(u.op_type in SHAPE_OPS for u in users) or readable):
                raise OnnxImportError(f"{g.where}: {', '.join(node_label(u) for u in users)} after {tensor!r} comes "
                                      f"before {node_label(later)}; the trainable tail must be a chain of dense "
                                      "layers: cut after that node")
            if binary:  # p = sigmoid(z) is softmax([0, z])[1]: a two-class head, the same predictions
                last = layers[-1]
                layers[-1] = replace(last, weight=np.hstack([np.zeros_like(last.weight), last.weight]),
                                     bias=np.concatenate([np.zeros_like(last.bias), last.bias]))
            break  # the classifier's logits: what follows is prediction post-processing
        if len(users) != 1:
            names = [node_label(u) for u in users] or ["nothing"]
            raise OnnxImportError(f"{g.where}: tensor {tensor!r} feeds {', '.join(names)}; the trainable tail must "
                                  f"be a chain of dense layers (Gemm, or MatMul + Add, with {TRAINABLE}) "
                                  "ending at the output")
        node = users[0]
        if is_linear_classifier(node):  # scikit-learn's linear model: always the classifier
            w, b, out, labels = read_linear_classifier(node, tensor, g.where)
            layers.append(DenseLayer(node.name or f"{node.op_type}:{node.output[0]}", out, w, b, "none",
                                     gives="probabilities", labels=labels))
            if len(layers) > 1 and layers[-2].weight.shape[1] != w.shape[0]:
                raise OnnxImportError(f"{g.where}: {node_label(node)}: takes {w.shape[0]} features, the layer "
                                      f"before gives {layers[-2].weight.shape[1]}")
            break
        layer = _dense(g, node, tensor)
        if layers and layers[-1].weight.shape[1] != layer.weight.shape[0]:
            raise OnnxImportError(f"{g.where}: {node_label(node)}: takes {layer.weight.shape[0]} features, "
                                  f"the layer before gives {layers[-1].weight.shape[1]}")
        layers.append(layer)
        tensor, users = g.follow(layer.output)
    if not layers:
        raise OnnxImportError(f"{g.where}: no dense layer after the cut {cut!r}: nothing to train")
    return layers


def find_cut(g: _Graph) -> str:
    """The earliest tensor from which the rest of the graph is a dense tail."""
    last_error = None
    for node in g.model.graph.node:  # each dense layer (onnx_dense.py), and scikit-learn's linear models
        dense = dense_operands(node, g.consts, g.producer)
        x = dense.x if dense else node.input[0] if is_linear_classifier(node) else None
        if x is not None:
            try:
                parse_tail(g, x)
                return x
            except OnnxImportError as exc:
                last_error = exc
    raise no_tail_error(g, last_error)


def import_spec(options: ImportOptions) -> ModelSpec:
    """Read the source model and describe its dense tail as a ModelSpec (see spec.py)."""
    model, digest = load_source(options.onnx)
    g = _Graph(model, options.onnx)
    cut = find_cut(g) if options.cut == "auto" else options.cut
    if cut != g.input.name and not any(cut in n.output for n in model.graph.node):
        raise OnnxImportError(f"{options.onnx}: no tensor named {cut!r} in the graph")
    check_cut_type(g, cut)
    check_backbone_finite(model, cut, options.onnx)  # the tail's own weights: DenseLayer
    input_shape = source_input_shape(g.input, tuple(options.input_shape), options.onnx)
    try:
        tail = parse_tail(g, cut)
    except OnnxImportError as exc:
        if options.num_classes == 0 or options.cut == "auto":
            raise
        check_roles(options.onnx, options.roles, [], None, False)  # any role names a layer not there
        log.warning("%s: %s; so the model up to %r is the frozen backbone and only the new head trains",  # --classes
                    options.onnx, str(exc).removeprefix(f"{options.onnx}: "), cut)
        return _spec(options, digest, input_shape, (), options.num_classes, cut,
                     cut_features(model, g.input.name, input_shape, cut, options.onnx))
    moved = options.cut == "auto" and frozen_notice(g, cut, {layer.node for layer in tail},
                                                    lambda node: _read_layer(g, node))
    if moved:
        log.warning("%s: %s", options.onnx, moved)
    for notice in (tied_notice(tail), backbone_tie_notice(g, cut, tail if options.num_classes == 0 else tail[:-1])):
        if notice:
            log.warning("%s: %s", options.onnx, notice)
    hidden, classifier = tail[:-1], tail[-1]
    names = check_roles(options.onnx, options.roles, [layer.node for layer in hidden], classifier.node, bool(moved))
    layers = tuple(LayerSpec(name=n, units=layer.weight.shape[1], activation=layer.activation, mode=options.roles.get(
        n, options.default_role), negative_slope=layer.negative_slope) for n, layer in zip(names, hidden))
    keep = options.num_classes == 0
    if keep and classifier.weight.shape[1] == 1:
        raise OnnxImportError(f"{options.onnx}: the last layer {classifier.node!r} gives one value and no Sigmoid "
                              "follows it: fedge trains classifiers (a binary one ends in a Sigmoid); for a new "
                              "head give --classes K")
    if keep and classifier.activation != "none":  # K Sigmoids (multi-label) are not one softmax over K
        raise OnnxImportError(f"{options.onnx}: classifier {classifier.node!r} ends in {classifier.activation}; "
                              "fedge heads give logits (one softmax over the classes): for a new head give --classes K")
    if keep:
        batch = g.input.type.tensor_type.shape.dim[0].dim_value  # 0 where free
        check_normalizers(model, g.downstream, classifier.output, classifier.node, classifier.weight.shape[1],
                          options.onnx, (g.input.name, input_shape, batch))
        check_post_processing(g.downstream, g.consumers, classifier.output, classifier.node, options.onnx,
                              AFTER_PROBABILITIES if classifier.gives == "probabilities" else (), g.consts,
                              sigmoid_inside=classifier.gives == "sigmoid")
        if classifier.gives == "logits":
            check_sklearn_scores(model, g.downstream, classifier.output, classifier.node, options.onnx)
    labels = (g.class_labels(classifier.output) if classifier.labels is None else classifier.labels) if keep else None
    if labels is not None and not (labels.dtype.kind in "iu" and np.array_equal(labels, np.arange(labels.size))):
        # fedge's labels are the classifier's output indices; the source's mapping is dropped
        # with the rest of its post-processing, so data labelled as the source was would be off
        shown = ", ".join(f"{i} -> {v!r}" for i, v in enumerate(labels.tolist()[:6]))
        log.warning("%s: the model maps its %d outputs to labels (%s%s); fedge trains on output indices, so "
                    "label the devices' data 0..%d in that order", options.onnx, labels.size, shown,
                    ", ..." if labels.size > 6 else "", labels.size - 1)
    return _spec(options, digest, input_shape, layers, classifier.weight.shape[1] if keep else options.num_classes,
                 cut, tail[0].weight.shape[0])


def _spec(options: ImportOptions, digest: str, input_shape: tuple[int, ...], layers: tuple[LayerSpec, ...],
          num_classes: int, cut: str, features: int) -> ModelSpec:  # what both import_spec paths return
    return ModelSpec(
        name=options.name or Path(options.onnx).stem.replace("-", "_").replace(".", "_"), input_shape=input_shape,
        num_classes=num_classes, layers=layers, head=options.head, lora_rank=options.lora_rank,
        lora_alpha=options.lora_alpha, lora_train_a=options.lora_train_a, init_seed=options.init_seed,
        onnx=str(options.onnx), onnx_sha256=digest, onnx_cut=cut, onnx_features=features,
        onnx_keep_head=options.num_classes == 0)


def _checked_source(spec: ModelSpec) -> tuple[onnx.ModelProto, _Graph]:
    model, _ = load_source(spec.onnx, spec.onnx_sha256)
    return model, _Graph(model, spec.onnx)


def pretrained_values(spec: ModelSpec) -> dict[str, np.ndarray]:
    """The tail's pretrained weights under the spec's names (and the heads', when kept)."""
    if not spec.layers and not spec.onnx_keep_head:  # a new head on the cut (onnx_new_head.py): nothing to read
        return {}
    _, g = _checked_source(spec)
    tail = parse_tail(g, spec.onnx_cut)
    values = {}
    for layer, dense in zip(spec.layers, tail[:-1]):
        values[f"{layer.name}.weight"], values[f"{layer.name}.bias"] = dense.weight, dense.bias
    if spec.onnx_keep_head:
        for head in {"dual": ("global", "personal"), "global": ("global",), "personal": ("personal",)}[spec.head]:
            values[f"head_{head}.weight"], values[f"head_{head}.bias"] = tail[-1].weight, tail[-1].bias
    return {k: np.ascontiguousarray(v, np.float32) for k, v in values.items()}
