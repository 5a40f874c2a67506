"""The way back out: a device's personalized model as one standalone ONNX inference graph.

    x (N, *input_shape) -> backbone.onnx as built -> trainable dense layers -> head -> logits (N, C)

LoRA layers are merged: W' = W + (alpha / rank) * A @ B, so the graph is plain MatMul, Add and
the layers' activations after the backbone, in whatever opset the backbone has (an imported one
keeps its source's).
Stock onnxruntime runs it; the inference side needs nothing of fedge. A FusedGemm of ONNX Runtime's
optimizer left in the backbone is written as standard ops (onnx_unfuse.py); other com.microsoft ops a
source holds (FusedConv, ...) stay, and need onnxruntime's contrib ops, as the source did.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.files import load_npz
from fedge.edge_runtime.kernel.manifest import check_params, load_manifest

from .graphs import ACTIVATION_OPS, INV_SQRT2
from .onnx_builder import IR_VERSION, OPSET
from .onnx_scope import all_nodes, free_prefix
from .spec import ModelSpec, spec_from_dict

Dense = tuple[np.ndarray, np.ndarray, str, float]  # weight (in, out), bias (out,), activation, its negative slope
# The export's own nodes need opset 7, the first whose Add, Sub and Div broadcast numpy-style (before
# it, a bias Add needed broadcast = 1, and onnxruntime has no kernel for Add, Sub or Div below 7),
# and 9 for the Erf of a GELU.
BROADCAST_OPSET, ERF_OPSET = 7, 9


def append_dense(model: onnx.ModelProto, start: str, layers: list[Dense], out: str, prefix: str) -> None:
    """Add MatMul + Add (+ its activation) per layer from tensor `start` to a new tensor `out`, in place."""
    graph = model.graph
    h = start
    for i, (w, b, activation, slope) in enumerate(layers):
        name = f"{prefix}{i}"
        graph.initializer.extend([numpy_helper.from_array(np.ascontiguousarray(w, np.float32), f"{name}.weight"),
                                  numpy_helper.from_array(np.ascontiguousarray(b, np.float32), f"{name}.bias")])
        last = i == len(layers) - 1
        pre = out if last and activation == "none" else f"{name}.pre"
        graph.node.extend([helper.make_node("MatMul", [h, f"{name}.weight"], [f"{name}.mm"], name=f"{name}.matmul"),
                           helper.make_node("Add", [f"{name}.mm", f"{name}.bias"], [pre], name=f"{name}.add")])
        h = pre
        if activation != "none":
            h = out if last else f"{name}.{activation}"
            graph.node.extend(_activation_nodes(graph, activation, slope, pre, h, f"{name}.{activation}"))


def _activation_nodes(graph: onnx.GraphProto, activation: str, slope: float, x: str, out: str,
                      name: str) -> list[onnx.NodeProto]:
    """out = activation(x) as ONNX nodes (kernel/activations.py); GELU from Erf, which every
    opset since 9 has (Gelu itself is opset 20)."""
    if activation == "leaky_relu":
        return [helper.make_node("LeakyRelu", [x], [out], name=name, alpha=float(slope))]
    if activation != "gelu":
        return [helper.make_node(ACTIVATION_OPS[activation], [x], [out], name=name)]
    graph.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), f"{name}.{k}")
                              for k, v in (("inv_sqrt2", INV_SQRT2), ("one", 1.0), ("half", 0.5))])
    steps = [("Mul", [x, f"{name}.inv_sqrt2"]), ("Erf", [f"{name}.0"]), ("Add", [f"{name}.1", f"{name}.one"]),
             ("Mul", [f"{name}.2", f"{name}.half"]), ("Mul", [x, f"{name}.3"])]
    return [helper.make_node(op, inputs, [out if i == len(steps) - 1 else f"{name}.{i}"], name=f"{name}/{i}")
            for i, (op, inputs) in enumerate(steps)]


def at_least_opset(model: onnx.ModelProto, minimum: int, name: str) -> onnx.ModelProto:
    """`model` itself where its default-domain opset is `minimum` or later, else converted to
    `minimum` (onnx.version_converter). A backbone of an older opset (Conv, Relu and Flatten of
    opset 6 import and train: onnxruntime runs them) once got the export's Add and Sub written
    into opset 6, and onnxruntime refused the exported file. ConfigError where the backbone
    cannot be converted."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), minimum)
    if version >= minimum:
        return model
    try:
        converted = version_converter.convert_version(model, minimum)
        onnx.checker.check_model(converted)
    except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors and ValidationErrors
        raise ConfigError(f"model {name}: its backbone is ONNX opset {version}, and the export's nodes need opset "
                          f"{minimum} or later; converting the backbone failed: {exc}") from None
    return converted


def rename_output(model: onnx.ModelProto, old: str, new: str) -> None:
    for node in model.graph.node:
        node.output[:] = [new if n == old else n for n in node.output]
        node.input[:] = [new if n == old else n for n in node.input]
    for value in model.graph.output:
        if value.name == old:
            value.name = new


def dense_tail(spec: ModelSpec, values: dict[str, np.ndarray], head: str | None,
               which: slice | None = None) -> list[Dense]:
    """The layers after the backbone (or `which` of them) with LoRA merged, then `head` (None: no head)."""
    layers = []
    for layer in spec.layers[which or slice(spec.backbone_depth, None)]:
        w = values[f"{layer.name}.weight"].astype(np.float64)
        if layer.mode == "lora":
            w = w + spec.lora_scale * (values[f"{layer.name}.lora_a"].astype(np.float64)
                                       @ values[f"{layer.name}.lora_b"])
        layers.append((w.astype(np.float32), values[f"{layer.name}.bias"], layer.activation, layer.negative_slope))
    if head is not None:
        layers.append((values[f"head_{head}.weight"], values[f"head_{head}.bias"], "none", 0.0))
    return layers


def export_model(artifact_dir: str | Path, shared: dict[str, np.ndarray], personal: dict[str, np.ndarray],
                 head: str | None = None,
                 standardization: tuple[np.ndarray, np.ndarray] | None = None) -> onnx.ModelProto:
    """backbone + shared and personal params -> x (N, *input_shape) -> logits (N, C).

    head: "personal" (default where the model has one) or "global". standardization: the
    device's (mean, std) (kernel/features.py), put in front as (x - mean) / std (prepend_affine)."""
    artifact_dir = Path(artifact_dir)
    manifest = load_manifest(artifact_dir, verify=True)
    check_params(manifest, shared, "shared")
    check_params(manifest, personal, "personal")
    spec = spec_from_dict(manifest.spec, where=f"{artifact_dir}/manifest.json")
    head = head or ("personal" if "personal" in manifest.heads else "global")
    if head not in manifest.heads:
        raise ConfigError(f"model {manifest.name} has no {head} head (heads: {list(manifest.heads)})")
    values = {**load_npz(artifact_dir / "params_init.npz"), **shared, **personal}
    tail = dense_tail(spec, values, head)
    if (artifact_dir / "backbone.onnx").exists():
        needed = ERF_OPSET if any(activation == "gelu" for _, _, activation, _ in tail) else BROADCAST_OPSET
        model = at_least_opset(onnx.load(artifact_dir / "backbone.onnx"), needed, manifest.name)
        # An imported backbone keeps its source's tensor names, and a source may name one of its
        # own 'logits' (a Keras layer's name): export once refused such a model after it had
        # trained. That tensor moves aside; the export's output is the one named 'logits'.
        taken = {o for node in model.graph.node for o in node.output} | {t.name for t in model.graph.initializer}
        if "logits" in taken:
            aside = next(f"logits__backbone{i or ''}" for i in range(len(taken) + 1)
                         if f"logits__backbone{i or ''}" not in taken)
            rename_output(model, "logits", aside)
            for init in model.graph.initializer:
                init.name = aside if init.name == "logits" else init.name
        start = "z"
    else:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *manifest.input_shape])
        flat = helper.make_node("Flatten", ["x"], ["features"], name="flatten", axis=1)
        graph = helper.make_graph([flat], f"{manifest.name}-export", [x], [])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fedge")
        model.ir_version = IR_VERSION
        start = "features"
    # free_prefix: an imported fedge export (a personalized model taken to a new fleet) holds
    # fedge_export_0.weight and the rest already; the second export once repeated those names.
    append_dense(model, start, tail, "logits", prefix=free_prefix(model, "fedge_export_"))
    if standardization is not None:
        prepend_affine(model, *standardization, manifest.input_shape)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", spec.num_classes]))
    model.graph.name = f"{manifest.name}-personalized"
    model.doc_string = f"fedge export of model {manifest.model_id} ({head} head)"
    onnx.checker.check_model(model)
    return model


def prepend_affine(model: onnx.ModelProto, mean: np.ndarray, std: np.ndarray, input_shape) -> None:
    """In place: the graph's input x is first standardized, (x - mean) / std in float32, and every
    node that read x reads the result, so the model takes the features as the device holds them
    before [data] standardize. mean, std: float64, per-example shapes that hold as many values as
    input_shape (a device reshapes its examples to the model's input alike).

    The mean goes in as two float32 terms, x - hi - lo with hi = float32(mean) and lo the rest:
    one Sub of float32(mean) left an offset of up to half its float32 spacing, 4.7e-4 standardized
    units for features of mean 1e4 and std 1, where the device subtracts in float64; x - hi is
    exact for x within a factor of 2 of hi, and the two Subs stayed within 4.8e-7 of the device
    (means 0 to 1e5, stds 1e-4 to 1e4)."""
    graph = model.graph
    if mean.size != math.prod(input_shape) or std.size != mean.size:
        raise ConfigError(f"the device's data has {mean.size} features per example but the model's input "
                          f"{tuple(input_shape)} takes {math.prod(input_shape)}: its standardization cannot go first")
    inits = {t.name for t in graph.initializer}
    x = next(i.name for i in graph.input if i.name not in inits)
    # free: a model that standardizes already (an imported fedge export) holds x__fedge_mean_hi, ...
    p, node = free_prefix(model, f"{x}__fedge_"), free_prefix(model, "fedge_standardize.")
    out = f"{p}standardized"
    for n in all_nodes(graph):  # subgraphs (If, Loop) may read x from the outer scope
        n.input[:] = [out if name == x else name for name in n.input]
    hi = np.asarray(mean, np.float32)
    terms = {"mean_hi": hi, "mean_lo": np.asarray(mean, np.float64) - hi, "std": std}
    graph.initializer.extend([numpy_helper.from_array(np.asarray(v, np.float32).reshape(input_shape), f"{p}{k}")
                              for k, v in terms.items()])
    steps = [helper.make_node("Sub", [x, f"{p}mean_hi"], [f"{p}0"], name=f"{node}sub_hi"),
             helper.make_node("Sub", [f"{p}0", f"{p}mean_lo"], [f"{p}1"], name=f"{node}sub_lo"),
             helper.make_node("Div", [f"{p}1", f"{p}std"], [out], name=f"{node}div")]
    rest = list(graph.node)
    del graph.node[:]
    graph.node.extend([*steps, *rest])
