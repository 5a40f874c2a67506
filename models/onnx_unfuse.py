"""ONNX Runtime's FusedGemm in a frozen backbone, written back as Gemm and its activation op.

A model saved by ONNX Runtime's optimizer (onnx_gemm.py) keeps a com.microsoft FusedGemm in the
backbone wherever the tail does not read it (an activation the tail cannot train, a BatchNorm
after it), and with it all of ONNX Runtime's opset imports (com.microsoft, nchwc, training, ...).
The device's export (export.py) then needed ONNX Runtime's contrib ops: a build without them or
another runtime could not run it. Each activation ONNX Runtime fuses is a standard ONNX op, its
attributes those of the FusedGemm less the "activation_" prefix, so each FusedGemm becomes Gemm
-> that op, and the opset imports no node uses any more are dropped. A FusedGemm that cannot be
written so (an activation the model's opset does not define, an attribute its schema lacks,
a Gemm below opset 11 without its bias) stays as it is: ONNX Runtime runs it, as before.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .onnx_gemm import FUSED_GEMM
from .onnx_scope import all_nodes, free_prefix

PREFIX = "activation_"


def unfuse_gemms(model: onnx.ModelProto) -> int:
    """Rewrite `model`'s top-level FusedGemm nodes in place (module docstring); how many were."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    nodes, rewritten = [], 0
    for node in model.graph.node:
        pair = _unfused(model, node, opset) if (node.domain, node.op_type) == FUSED_GEMM else None
        nodes.extend(pair or [node])
        rewritten += pair is not None
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = {"", "ai.onnx"} | {n.domain for n in all_nodes(model.graph)} | {f.domain for f in model.functions}
        used |= {n.domain for f in model.functions for n in f.node}
        kept = [o for o in model.opset_import if o.domain in used]
        del model.opset_import[:]
        model.opset_import.extend(kept)
    return rewritten


def _unfused(model: onnx.ModelProto, node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto] | None:
    """[Gemm, activation] computing what `node` does, or None where that cannot be written."""
    if not opset or opset < 11 and len(node.input) < 3:  # Gemm's C is optional from opset 11
        return None
    fused = {a.name: a for a in node.attribute if a.name.startswith(PREFIX) or a.name == "activation"}
    kind = fused.pop("activation").s.decode() if "activation" in fused else ""
    gemm = helper.make_node("Gemm", list(node.input), list(node.output), name=node.name)
    gemm.attribute.extend(a for a in node.attribute if not a.name.startswith("activation"))
    if not kind:
        return [gemm]
    try:
        schema = onnx.defs.get_schema(kind, opset, "")
    except onnx.defs.SchemaError:
        return None
    if any(name.removeprefix(PREFIX) not in schema.attributes for name in fused):
        return None
    z = free_prefix(model, f"{node.output[0]}__gemm")
    gemm.output[0] = z
    act = helper.make_node(kind, [z], list(node.output), name=free_prefix(model, f"{node.name or z}__{kind}"))
    for attr in fused.values():
        renamed = onnx.AttributeProto()
        renamed.CopyFrom(attr)
        renamed.name = attr.name.removeprefix(PREFIX)
        act.attribute.append(renamed)
    return [gemm, act]

