"""The part of a source graph from its input to one tensor, as a model of its own: what
onnx.utils.Extractor(model).extract_model([input], [output]) makes (onnx 1.16.2), without two
of its limits that a user's model hit when its backbone was cut out (onnx_prefix.py):

- a subgraph (If, Loop, Scan) that reads an outer tensor by name: Extractor kept the node but
  not that tensor (it follows node.input alone), and a valid model was refused as "not a valid
  ONNX model ... topologically sorted";
- a deep graph: Extractor walks back from the output by recursion, one Python frame a node, and
  a chain of 1,500 nodes ended in RecursionError, a traceback.

Like Extractor, it runs shape inference first, keeps the source's IR version, opsets and the
local functions the kept nodes call, and takes the output's value info from what inference found.
"""

from __future__ import annotations

import onnx
from onnx import helper

from .onnx_scope import node_reads
from .onnx_source import subgraphs


def _functions(model: onnx.ModelProto, nodes) -> list[onnx.FunctionProto]:
    """The model's local functions that `nodes` call, and those they call in turn, in the
    subgraphs (If, Loop, Scan) of those nodes and of the functions' bodies too: a call only inside
    an If branch was left out, and the backbone refused as calling an unregistered op."""
    local = {(f.domain, f.name): f for f in model.functions}
    found: dict[tuple[str, str], onnx.FunctionProto] = {}
    todo = list(nodes)
    while todo:
        node = todo.pop()
        for sub in subgraphs(node):
            todo.extend(sub.node)
        key = (node.domain, node.op_type)
        if key in local and key not in found:
            found[key] = local[key]
            todo.extend(local[key].node)
    return [f for f in model.functions if (f.domain, f.name) in found]


def extract(model: onnx.ModelProto, source_input: str, output: str) -> onnx.ModelProto:
    """`source_input` -> `output`: the nodes `output` is computed from (through what their subgraphs
    read, too), stopping at `source_input`, with the stored values and value info they use."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    producer = {o: n for n in graph.node for o in n.output}
    seen, todo = set(), [output]
    while todo:  # a walk with a list, not recursion: a graph may be thousands of nodes deep
        name = todo.pop()
        node = producer.get(name) if name != source_input else None
        if node is not None and id(node) not in seen:
            seen.add(id(node))
            todo.extend(node_reads(node))
    nodes = [n for n in graph.node if id(n) in seen]
    names = {source_input, output, *(r for n in nodes for r in node_reads(n)), *(o for n in nodes for o in n.output)}
    infos = {v.name: v for v in (*graph.value_info, *graph.input, *graph.output)}
    new = helper.make_graph(nodes, "Extracted from {" + graph.name + "}", [infos[source_input]], [infos[output]],
                            initializer=[t for t in graph.initializer if t.name in names],
                            value_info=[v for v in graph.value_info if v.name in names])
    return helper.make_model(new, ir_version=model.ir_version, opset_imports=model.opset_import,
                             producer_name="fedge (onnx.utils.extract_model)", functions=_functions(model, nodes))
