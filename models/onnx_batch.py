"""A backbone cut from a graph exported at a fixed batch size must still take any batch.

torch.onnx.export with a batch-1 example and no dynamic axes writes `x.view(x.size(0), -1)`
(and, with the dynamo exporter, torch.flatten and nn.Flatten too) as a Reshape to the constant
[1, -1]: run on N examples, such a backbone folds them into one row, and training then fails far
from the cause (an index error in the device's batching, or ORT refusing the Reshape). Where the
source's batch dimension is fixed at B, each Reshape that the input reaches and whose target
shape is a stored constant starting with B gets 0 there instead (ONNX: copy that dimension of
the Reshape's input), and the result is checked by running it with ONNX Runtime:

    at the source's batch B it gives what the unchanged prefix gives, and
    on a batch of three, each row is what that example gives run alone.

A source exported with a free batch is only run on a batch of three (ONNX Runtime must load it,
and give three rows): nothing was folded there, and a model whose ops take statistics over the
batch (dynamic quantization's per-tensor scale) must not be refused for rows that differ.

A prefix that fails either check, or that ONNX Runtime cannot run, raises OnnxImportError that
names the Reshape nodes with constant shapes and the fix: export with a dynamic batch axis.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from .onnx_probe import quiet_session
from .onnx_source import OnnxImportError, node_label, stored_tensors, subgraphs


def _reached_from(graph: onnx.GraphProto, source: str) -> set[str]:
    """Tensors computed from `source` (ONNX graphs list their nodes in topological order)."""
    reached = {source}
    for node in graph.node:
        if any(name in reached for name in node.input):
            reached.update(node.output)
    return reached



def free_fixed_batch(prefix: onnx.ModelProto, source_batch: int) -> list[str]:
    """Rewrite, in place, the Reshapes that hard-code the source's batch (module docstring);
    the labels of the nodes changed. source_batch <= 0 (a free batch dim): nothing to do."""
    if source_batch <= 0:
        return []
    graph, changed, replaced = prefix.graph, [], set()
    reached, stored = _reached_from(graph, graph.input[0].name), stored_tensors(graph)
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[0] not in reached \
                or node.input[1] not in stored:
            continue
        shape = numpy_helper.to_array(stored[node.input[1]])
        if shape.ndim != 1 or not shape.size or int(shape[0]) != source_batch:
            continue
        allowzero = [a for a in node.attribute if a.name == "allowzero"]
        if allowzero and allowzero[0].i:  # the dynamo exporter's: 0 means a zero-length dimension
            if (shape == 0).any():
                continue
            allowzero[0].i = 0  # the same Reshape where the shape holds no 0; then 0 means "copy"
        target = shape.astype(np.int64)
        target[0] = 0
        name, shape_name = f"fedge_batch_shape_{len(changed)}", node.input[1]
        graph.initializer.append(numpy_helper.from_array(target, name))
        node.input[1] = name
        changed.append(node_label(node))
        replaced.add(shape_name)
    read = _names_read(graph)
    for i in reversed(range(len(graph.initializer))):  # a replaced shape, if nothing else reads it
        if graph.initializer[i].name in replaced - read:
            del graph.initializer[i]
    for i in reversed(range(len(graph.node))):
        if graph.node[i].op_type == "Constant" and graph.node[i].output[0] in replaced - read:
            del graph.node[i]
    return changed


def _names_read(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, in subgraphs (If, Loop, Scan) too, and the outputs."""
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(node.input)
        for sub in subgraphs(node):
            read |= _names_read(sub)
    return read


def _constant_reshapes(prefix: onnx.ModelProto) -> list[str]:
    stored = stored_tensors(prefix.graph)
    return [node_label(n) for n in prefix.graph.node
            if n.op_type == "Reshape" and len(n.input) > 1 and n.input[1] in stored]


def _reason(exc: Exception, limit: int = 400) -> str:
    """ORT's first line, shortened in the middle: it names the C++ function first and the reason
    last ("... Current official support for domain ai.onnx is till opset 21."), which cutting
    the end off once lost."""
    line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return line if len(line) <= limit else f"{line[:120]} ... {line[-(limit - 125):]}"


def check_any_batch(prefix: onnx.ModelProto, unchanged: onnx.ModelProto | None, input_shape: tuple[int, ...],
                    source_batch: int, where: str, features: int) -> None:
    """Run the prefix (x -> z) as the module docstring says; OnnxImportError when it fails, or
    when z is not `features` wide (the spec's onnx_features, what the tail or new head takes).
    `unchanged`: the prefix before free_fixed_batch rewrote it, or None when it did not."""
    import onnxruntime as ort  # the build's environment has it; devices only ever run the prefix

    def session(model: onnx.ModelProto):
        try:
            return quiet_session(model)
        except Exception as exc:  # ORT raises its own types (Fail, InvalidGraph, NotImplemented)
            raise OnnxImportError(f"{where}: ONNX Runtime {ort.__version__} cannot load the backbone cut from it: "
                                  f"{_reason(exc)}") from None

    def run(sess, x: np.ndarray) -> np.ndarray:
        try:
            return sess.run(["z"], {"x": x})[0]
        except Exception as exc:
            first_line = _reason(exc)
            raise OnnxImportError(f"{where}: the backbone fails on a batch of {len(x)}: {first_line}"
                                  f"{_advice(prefix, source_batch)}") from None

    rng = np.random.default_rng(0)
    sess = session(prefix)
    x = rng.standard_normal((3, *input_shape)).astype(np.float32)
    together = run(sess, x)
    if together.shape[0] != len(x):
        raise OnnxImportError(f"{where}: the backbone gave {together.shape[0]} row(s) of output for 3 examples in "
                              f"one batch{_advice(prefix, source_batch)}")
    if together.shape[1:] != (features,):  # a cut whose size follows the input's free dims, at another size
        raise OnnxImportError(f"{where}: the backbone gives {int(np.prod(together.shape[1:]))} features per example "
                              f"for input shape {tuple(input_shape)}, but the layer after the cut takes {features}: "
                              "the file's weights do not fit its graph, or the cut's size follows the input's free "
                              "dimensions (then give the input shape the model's dense layers were made for)")
    if source_batch <= 0:  # a free batch as exported: nothing was folded, and nothing rewritten
        return
    if unchanged is not None:
        xb = rng.standard_normal((source_batch, *input_shape)).astype(np.float32)
        if not _close(run(sess, xb), run(session(unchanged), xb)):
            raise OnnxImportError(f"{where}: giving the backbone a free batch dimension changed its output"
                                  f"{_advice(prefix, source_batch)}")
    if not all(_close(together[i:i + 1], run(sess, x[i:i + 1])) for i in range(len(x))):
        raise OnnxImportError(f"{where}: the backbone does not treat the examples of a batch separately (row i of "
                              "3 examples is not what example i gives alone; ops that take statistics over the "
                              "whole batch, such as DynamicQuantizeLinear, do that too)"
                              + _advice(prefix, source_batch))


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    # batch size can change ORT's kernels (and so the float rounding), never the values' meaning
    scale = float(np.nanmax(np.abs(b))) if b.size else 0.0
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-3, atol=1e-5 * max(1.0, scale), equal_nan=True)


def _advice(prefix: onnx.ModelProto, source_batch: int) -> str:
    suspects = _constant_reshapes(prefix)
    fixed = f"; the source's batch dimension is fixed at {source_batch}" if source_batch > 0 else ""
    return (f"{fixed}{'; Reshapes with stored shapes: ' + ', '.join(suspects[:5]) if suspects else ''}. Export the "
            "model with a dynamic batch axis: torch.onnx.export(..., dynamic_axes={'input': {0: 'N'}}), or "
            "dynamic_shapes with the dynamo exporter")
