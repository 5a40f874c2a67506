"""Names across an ONNX graph's scopes: what the subgraphs of If, Loop and Scan read from the
graph around them.

A subgraph may read any tensor of the scopes around it by its outer name, without it being an
input of the node that holds the subgraph: If(cond) with then_branch = MatMul(x, w) reads the
main graph's initializer w, and nothing in If's inputs says so. A walk over node.input alone
missed those reads (a NaN weight read only inside an If branch imported as finite).

refuse_rewritten: each tensor name is written once in a graph (ONNX's static single assignment),
and each node writes one at least.
"""

from __future__ import annotations

import onnx

from .onnx_source import OnnxImportError, subgraphs


def outer_reads(graph: onnx.GraphProto) -> set[str]:
    """The names `graph` reads that it does not define itself: its references to outer scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer} | \
        {t.values.name for t in graph.sparse_initializer}
    reads: set[str] = set()
    for node in graph.node:  # in topological order: a name a node reads is defined before it, or outside
        reads.update(n for n in node.input if n and n not in defined)
        for sub in subgraphs(node):
            reads.update(n for n in outer_reads(sub) if n not in defined)
        defined.update(node.output)
    return reads


def implicit_inputs(node: onnx.NodeProto) -> set[str]:
    """The tensors of the graph around `node` that its subgraphs read by name (module docstring)."""
    return set().union(*(outer_reads(sub) for sub in subgraphs(node)))


def node_reads(node: onnx.NodeProto) -> list[str]:
    """Everything `node` depends on: its inputs, then what its subgraphs read from outside."""
    return [*(n for n in node.input if n), *sorted(implicit_inputs(node) - set(node.input))]


def rename_everywhere(graph: onnx.GraphProto, names: dict[str, str]) -> None:
    """Rename tensors (old -> new) in `graph` and every subgraph in it: inputs, outputs, initializers,
    value info, and what nodes read and write. A subgraph's local tensor of such a name is renamed with
    its readers, so it still shadows what it did."""
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        value.name = names.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [names.get(n, n) for n in node.input]
        node.output[:] = [names.get(n, n) for n in node.output]
        for sub in subgraphs(node):
            rename_everywhere(sub, names)


def refuse_rewritten(graph: onnx.GraphProto, where: object) -> None:
    """OnnxImportError naming a tensor that two nodes write, or a node writes over an input or an
    initializer: ONNX names each value once (static single assignment). Such a graph was read
    as if the last writer were the only one (Relu(h) -> h made the tail "h feeds Relu, MatMul");
    ONNX Runtime refuses to load it. Each subgraph is checked on its own."""
    writer = {v.name: f"graph {'input' if v in graph.input else 'initializer'}"
              for v in (*graph.input, *graph.initializer)}
    for i, node in enumerate(graph.node):
        if not node.output:  # every reader of a graph names a node by its first output: an IndexError once
            raise OnnxImportError(f"{where}: {node.op_type} node {node.name or f'number {i}'!r} of graph "
                                  f"{graph.name!r} writes no tensor; an ONNX node has at least one output")
        label = f"{node.op_type} node {node.name or node.output[0]!r}"
        for name in (n for n in node.output if n):
            if name in writer:
                raise OnnxImportError(f"{where}: tensor {name!r} is written by {writer[name]} and by {label}; an "
                                      "ONNX graph names each value once: re-export the model")
            writer[name] = label
        for sub in subgraphs(node):
            refuse_rewritten(sub, where)


def refuse_cycles(graph: onnx.GraphProto, where: object) -> None:
    """OnnxImportError naming the nodes of a cycle (a node computed, through others, from its own
    output): the importer's walks along the graph (the tail from the cut, pass-through ops) went
    round one forever, growing the tail without end. ONNX graphs are acyclic; each subgraph is
    checked on its own. Kahn's algorithm: what is left when no node waits on another is a cycle."""
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    waits = [{producer[r] for r in node_reads(n) if r in producer} for n in graph.node]
    readers: dict[int, list[int]] = {}
    for i, inputs in enumerate(waits):
        for j in inputs:
            readers.setdefault(j, []).append(i)
    count = [len(w) for w in waits]
    ready = [i for i, c in enumerate(count) if c == 0]
    while ready:
        for j in readers.get(ready.pop(), []):
            count[j] -= 1
            if count[j] == 0:
                ready.append(j)
    left = {i for i, c in enumerate(count) if c > 0}  # the cycles, and what waits on them
    while sinks := {i for i in left if not any(r in left for r in readers.get(i, []))}:
        left -= sinks  # only waits: no node of a cycle reads it
    stuck = [graph.node[i] for i in sorted(left)]
    if stuck:
        names = ", ".join(f"{n.op_type} node {n.name or n.output[0]!r}" for n in stuck[:4])
        raise OnnxImportError(f"{where}: the graph {graph.name!r} has a cycle through {names}"
                              f"{', ...' if len(stuck) > 4 else ''}: an ONNX graph computes each node once, from "
                              "values computed before it; the file is broken")
    for node in graph.node:
        for sub in subgraphs(node):
            refuse_cycles(sub, where)


def free_prefix(model: onnx.ModelProto, stem: str) -> str:
    """`stem`, or `stem` numbered (fedge_export_ -> fedge_export1_, fedge_export2_, ...), that no name in the model
    begins with: no tensor, initializer or node name of the export can then repeat one of its own."""
    graph = model.graph
    names = {name for n in all_nodes(graph) for name in (n.name, *n.input, *n.output)}
    names |= {t.name for t in graph.initializer} | {v.name for v in (*graph.input, *graph.output)}
    base = stem.rstrip("_.")
    sep = stem[len(base):]
    return next(p for p in (f"{base}{i or ''}{sep}" for i in range(len(names) + 2))
                if not any(name.startswith(p) for name in names))


def all_nodes(graph: onnx.GraphProto):
    """Every node of graph and of the subgraphs its nodes' attributes hold."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                yield from all_nodes(sub)
