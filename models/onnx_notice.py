"""Say what an automatic cut left frozen, and why.

The automatic cut starts the trainable tail after the last op the tail cannot train through
(ELU, SiLU, BatchNormalization, a Reshape, ...), so the dense layers before it stay frozen
in the backbone. A probe's torch MLP with a GELU printed only "cut at '/1/Mul_1_output_0'; tail
fc1=lora": nothing said that its first Linear would not train, or that the GELU (written as Div,
Erf, Add, Mul) was the reason. This names both. Where the nearest frozen layer is refused as a
layer (a Gemm C that is no bias per output, transA), that refusal is the reason given: the
notice once blamed the Relu after it, which the tail trains through.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx

from .onnx_activation import TRAINABLE
from .onnx_dense import dense_operands
from .onnx_source import OnnxImportError, UnknownLayerRole


def _label(node: onnx.NodeProto) -> str:
    return f"{node.op_type} {node.name or node.output[0]!r}"


def check_roles(where: str, roles, hidden_nodes: list[str], classifier_node: str | None, cut_moved: bool) -> list[str]:
    """The hidden layers' names (fc1..fcK), once every role names one of them. A role for a layer
    the tail lacks once got only the reason a cut moves (activations it cannot train), with no
    such activation in the model: the user had named a layer that is not there. classifier_node
    None: no tail was read (only the new head of --classes trains)."""
    names = [f"fc{i + 1}" for i in range(len(hidden_nodes))]
    unknown = sorted(set(roles) - set(names))
    if unknown:
        moved = (f"; the layers before the cut stay frozen in the backbone, since the tail starts after the last "
                 f"activation other than {TRAINABLE} (the warning above names it)") if cut_moved else ""
        raise UnknownLayerRole(
            f"import {where}: a role for {', '.join(unknown)}, but no layer {' or '.join(unknown)} exists: the tail's "
            f"hidden layers are {', '.join(names) or 'none'} (ONNX nodes {hidden_nodes}), and "
            + (f"the classifier {classifier_node!r} is the head, which takes no role{moved}" if classifier_node
               else "no tail was read past the cut: only the new head trains, which takes no role"))
    return names


def frozen_notice(g, cut: str, tail_nodes: set[str], read_layer: Callable[[onnx.NodeProto], object]) -> str | None:
    """None when no dense layer (onnx_dense.py) stays before `cut` (one after it is no part of the
    imported model: the backbone ends at the cut, and a --classes head drops the source's tail with
    the post-processing after it, which once was listed as frozen); else one sentence naming the
    frozen dense layers and why: the refusal of the nearest of them as a layer (read_layer raises
    OnnxImportError prefixed with g.where: a bias that is none per output, transA), else the ops
    between it and the cut. tail_nodes: the tail's layer names. g: onnx_import._Graph."""
    model, consts, producer = g.model, g.consts, g.producer

    def is_dense(n: onnx.NodeProto) -> bool:
        return dense_operands(n, consts, producer) is not None

    dropped = {id(n) for n in g.downstream(cut)}  # after the cut and not the tail: post-processing, not imported
    frozen = [n for n in model.graph.node if is_dense(n) and id(n) not in dropped
              and (n.name or f"{n.op_type}:{n.output[0]}") not in tail_nodes]
    if not frozen:
        return None
    between, nearest, seen, todo = [], [], set(), [cut]  # walk back from the cut to the nearest dense layers
    while todo:
        node = producer.get(todo.pop())
        if node is not None and is_dense(node):
            nearest.append(node)
        if node is None or id(node) in seen or is_dense(node) or node.op_type == "Constant":
            continue
        seen.add(id(node))
        between.append(node)
        todo.extend(i for i in node.input if i not in consts)
    ops = ", ".join(dict.fromkeys(n.op_type for n in reversed(between)))
    shown = ", ".join(_label(n) for n in frozen[:4]) + (f" and {len(frozen) - 4} more" if len(frozen) > 4 else "")
    head = f"{len(frozen)} dense layer(s) stay frozen in the backbone ({shown}): the trainable tail starts after " \
           f"{ops or 'the cut'}"
    for node in nearest:  # the activation is no reason where the layer itself cannot train (Relu blamed once)
        try:
            read_layer(node)
        except OnnxImportError as exc:
            return f"{head}: it cannot start at {str(exc).removeprefix(g.where + ': ')}"
    return f"{head}, which is not one {TRAINABLE} it can train through"


def tied_notice(layers: list) -> str | None:
    """None unless two layers of the trainable tail hold the same weight matrix (or one the
    other's transpose): a source that ties them (torch `fc2.weight = fc1.weight`, one initializer
    read twice) imports them as independent fedge layers, which start equal and drift apart as
    they train. Said, not refused: the imported model computes what the source does until then."""
    pairs = [f"{a.node!r} and {b.node!r}" for i, a in enumerate(layers) for b in layers[i + 1:]
             if _same_matrix(a.weight, b.weight)]
    if not pairs:
        return None
    return (f"the layers {', '.join(pairs)} share their weights in the source (tied); fedge trains each "
            "as its own layer, so after training they differ: the tie is not kept")


def backbone_tie_notice(g, cut: str, layers: list) -> str | None:
    """None unless a layer of the trainable tail holds the same weight matrix (or its transpose)
    as a dense layer that stays in the frozen backbone: torch's one Linear applied before and
    after the cut. Both copies start equal; fedge trains the tail's and the backbone keeps the
    source's, so they drift apart, and the notice (frozen_notice) named the backbone's layer
    alone. layers: the tail's that train (a --classes head drops the source's classifier).
    g: onnx_import._Graph."""
    names, dropped = {layer.node for layer in layers}, {id(n) for n in g.downstream(cut)}
    pairs = []
    for node in g.model.graph.node:
        dense = dense_operands(node, g.consts, g.producer)
        if dense is None or id(node) in dropped or (node.name or f"{node.op_type}:{node.output[0]}") in names:
            continue
        weight = g.consts[dense.weight]
        pairs += [f"{layer.node!r} and {_label(node)}" for layer in layers if _same_matrix(weight, layer.weight)]
    if not pairs:
        return None
    return (f"a tail layer and a layer of the frozen backbone share their weights in the source (tied): "
            f"{'; '.join(pairs)}; fedge trains the tail's copy and the backbone keeps the source's, so after "
            "training they differ: the tie is not kept")


def _same_matrix(a, b) -> bool:
    if a.size < 2 or (a == a.flat[0]).all():  # a constant matrix is not a tie
        return False
    return (a.shape == b.shape and (a == b).all()) or (a.shape == b.T.shape and (a == b.T).all())
