"""Sparse initializers (and Constants with a sparse_value), stored dense when the importer loads
a model (onnx_source.load_source), so the rest of the importer reads them as any stored value.

A model with one was refused as its weight being "computed, not a constant", or, in the
backbone, ended in onnx.utils.Extractor's ValueError; and its NaNs went unchecked. ONNX stores
one as values (NNZ,), indices (NNZ,) into the flattened tensor or (NNZ, rank), and dims. A file
whose indices fall outside dims, repeat, do not match the values, or whose dense size is past what a
model file could hold, is refused by name.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .onnx_source import OnnxImportError, subgraphs

MAX_DENSE_BYTES = 2 ** 31  # a protobuf model holds less than 2 GiB: a sparse tensor past that is no weight


def densify(graph: onnx.GraphProto, where: str | Path) -> None:
    """Store every sparse initializer of `graph` (and its subgraphs) as an initializer, and every
    Constant's sparse_value as its value, in place."""
    for sparse in graph.sparse_initializer:
        graph.initializer.append(_dense(sparse, where))
    del graph.sparse_initializer[:]
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "sparse_value":
            value = _dense(node.attribute[0].sparse_tensor, where)
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("value", value))
        for sub in subgraphs(node):
            densify(sub, where)


def _dense(sparse: onnx.SparseTensorProto, where: str | Path) -> onnx.TensorProto:
    name, dims = sparse.values.name, tuple(sparse.dims)
    label = f"{where}: sparse tensor {name!r} of shape {dims}"
    try:
        values = numpy_helper.to_array(sparse.values).reshape(-1)
        indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    except Exception as exc:  # noqa: BLE001 - whatever onnx or numpy make of a broken tensor
        raise OnnxImportError(f"{label}: its values or indices cannot be read ({exc})") from None
    if values.dtype.kind not in "biufc" or any(d < 0 for d in dims) or \
            math.prod(dims) * values.itemsize > MAX_DENSE_BYTES:
        raise OnnxImportError(f"{label}: not a numeric tensor fedge can store dense ({values.dtype}, at most "
                              f"{MAX_DENSE_BYTES} bytes)")
    if indices.ndim == 2 and indices.shape[1] == len(dims) and dims and \
            np.all((indices >= 0) & (indices < np.asarray(dims, np.int64))):
        indices = np.ravel_multi_index(tuple(indices.T), dims)  # (NNZ, rank) -> flat
    # one place each: ONNX requires every index once (onnx.checker refuses a repeat; ONNX Runtime
    # keeps the last value written there, another reader may keep the first)
    if indices.shape != values.shape or indices.size and (indices.min() < 0 or indices.max() >= math.prod(dims)
                                                          or np.unique(indices).size != indices.size):
        raise OnnxImportError(f"{label}: {values.size} values for indices of shape {indices.shape} that are not one "
                              "place each inside the shape; the file is broken")
    dense = np.zeros(math.prod(dims), values.dtype)
    dense[indices] = values
    return numpy_helper.from_array(dense.reshape(dims), name)
