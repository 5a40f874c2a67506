"""Attributes of the type their op's schema says, checked when the importer loads a model.

The importer reads attributes of the ops it folds or checks (Gemm's alpha, beta, transA,
transB; LeakyRelu's alpha; Softmax's axis; BatchNormalization's epsilon) as the numbers ONNX
says they are. A hostile file's alpha of type STRING ("abc") or FLOATS ended the import in
numpy's ValueError, a traceback. ONNX Runtime refuses such a node too. Each attribute of an op
onnx knows (ai.onnx, ai.onnx.ml) is checked against the schema of the model's opset; ops of
other domains (com.microsoft, a user's) are left to ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from .onnx_source import OnnxImportError, subgraphs

TYPE_NAMES = {v: k for k, v in onnx.AttributeProto.AttributeType.items()}


def refuse_mistyped(model: onnx.ModelProto, where: str | Path) -> None:
    """OnnxImportError naming the first node with an attribute of another type than its schema's."""
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in model.opset_import}
    _check(model.graph, opsets, where)


def _check(graph: onnx.GraphProto, opsets: dict[str, int], where: str | Path) -> None:
    for node in graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        schema = None
        if domain in opsets and onnx.defs.has(node.op_type, domain):
            try:
                schema = onnx.defs.get_schema(node.op_type, opsets[domain], domain)
            except onnx.defs.SchemaError:  # no version of the op at that opset: ONNX Runtime says so
                schema = None
        for attr in node.attribute if schema is not None else ():
            expected = schema.attributes.get(attr.name)
            if expected is not None and attr.type != int(expected.type):
                raise OnnxImportError(f"{where}: {node.op_type} node {node.name or node.output[0]!r}: attribute "
                                      f"{attr.name} is {TYPE_NAMES.get(attr.type, attr.type)}, but "
                                      f"{node.op_type} takes {TYPE_NAMES.get(int(expected.type))}; the file is broken")
        for sub in subgraphs(node):
            _check(sub, opsets, where)
