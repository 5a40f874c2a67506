"""Reading a user's ONNX file for the importer (onnx_import.py): the model with its external
data read in, the sha256 the manifest records, and the one error type of the import."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.files import TooLarge, read_capped

from .onnx_quantized import dequantized


class OnnxImportError(ConfigError):
    """The source graph has something the importer cannot turn into a backbone and dense tail."""


class UnknownLayerRole(ConfigError):
    """A role (`--role fc3=lora`, a spec's `roles`) names a layer the imported tail does not have."""


def node_label(node: onnx.NodeProto) -> str:
    """How the importer's messages name a node: "MatMul node 'fc'" (its output when unnamed)."""
    return f"{node.op_type} node {node.name or node.output[0]!r}"


class Unreadable(NamedTuple):
    """A dense layer written otherwise (onnx_transposed.py, onnx_einsum.py) that the tail cannot
    read, and why: the importer refuses it under its node's name (the MatMul of W @ x^T, the
    Einsum), not the node the search reached it by, and with its own cause."""
    node: onnx.NodeProto
    why: str


MAX_MODEL_BYTES = 2 ** 31  # protobuf's limit on one message: an .onnx file past it is no model


def _too_big(path: Path) -> str:
    return (f"{path}: over {MAX_MODEL_BYTES} bytes, past protobuf's limit for an ONNX model; a model that big "
            "keeps its weights in external data (a .data file beside the .onnx)")


def load_source(path: str | Path, expect_sha256: str = "") -> tuple[onnx.ModelProto, str]:
    """The model with any external data read in (torch's dynamo exporter writes weights to a
    .data file beside the .onnx), and the sha256 of what was read: the .onnx file, then each data
    file it names, in name order (for a model without external data, the file's own sha256)."""
    path = Path(path)
    try:  # a regular file only (read_capped): a FIFO named by a manifest's spec blocked the build
        if path.stat().st_size > MAX_MODEL_BYTES:  # refused before anything is read
            raise TooLarge(str(path))
        data = read_capped(path, MAX_MODEL_BYTES)  # one that grew since is refused too
    except TooLarge:
        raise OnnxImportError(_too_big(path)) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the ONNX model ({exc.strerror})") from None
    except ValueError:  # a NUL byte in a spec file's `onnx` path
        raise ConfigError(f"{str(path)!r}: cannot read the ONNX model (a NUL byte in its path)") from None
    digest = hashlib.sha256(data)
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError, or others on truncated files
        if expect_sha256:
            _check_unchanged(path, digest.hexdigest(), expect_sha256)
        raise OnnxImportError(f"{path}: not an ONNX model ({exc})") from None
    files, pending = _external_data(model, path)
    for name in sorted(files):  # each data file is read once: what is hashed is what is loaded
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(files[name]).digest())
    if expect_sha256:
        _check_unchanged(path, digest.hexdigest(), expect_sha256)
    if model.ir_version > onnx.IR_VERSION:
        # The prefix keeps the source's ops; stamped with the newest IR this onnx checks, it is
        # then checked as that, and ONNX Runtime's run of it (onnx_batch) says if it takes it.
        model.ir_version = onnx.IR_VERSION
    for tensor, location, offset, length in pending:
        tensor.raw_data = files[location][offset:offset + length]
        tensor.data_location = TensorProto.DEFAULT
        del tensor.external_data[:]
    from .onnx_attrs import refuse_mistyped  # these import this module's error
    from .onnx_scope import refuse_cycles, refuse_rewritten
    from .onnx_sparse import densify

    densify(model.graph, path)
    _refuse_unreadable(model, path)
    refuse_rewritten(model.graph, path)
    refuse_cycles(model.graph, path)
    refuse_mistyped(model, path)
    _refuse_training_mode(model.graph, path)
    _refuse_machine_specific(model.graph, path)
    return model, digest.hexdigest()


def _refuse_unreadable(model: onnx.ModelProto, where: Path) -> None:
    """OnnxImportError naming a stored tensor whose data does not fill its shape (raw_data cut
    short, negative dims) or whose type onnx does not know: numpy's ValueError or a KeyError, a
    traceback, once the importer read it."""
    for tensor in (*_tensors(model.graph), *_node_tensors(n for f in model.functions for n in f.node)):
        try:
            if any(d < 0 for d in tensor.dims):  # numpy reads a -1 as "whatever fits"
                raise ValueError("a negative dimension")
            numpy_helper.to_array(tensor)
        except Exception as exc:  # noqa: BLE001 - ValueError, KeyError, TypeError: whatever a broken tensor gives
            raise OnnxImportError(f"{where}: stored tensor {tensor.name!r} of shape {tuple(tensor.dims)} (data type "
                                  f"{tensor.data_type}) cannot be read: {type(exc).__name__}: {exc}; the file is "
                                  "broken") from None


NCHWC = "com.microsoft.nchwc"


def _refuse_machine_specific(graph: onnx.GraphProto, where: Path) -> None:
    """ONNX Runtime's optimizer at ORT_ENABLE_ALL (optimized_model_filepath) rewrites convolutions
    into com.microsoft.nchwc ops whose channel blocks are the saving CPU's vector width (8 floats
    with AVX2, 16 with AVX-512), and warns that such a file "should only be used in the same
    environment the model was optimized in". The backbone keeps them, and the devices (other CPUs,
    aarch64 boards) run it: it imported and built on the machine that saved it, silently."""
    found = [n for n in graph.node if n.domain == NCHWC]
    if found:
        which = f"and {len(found) - 1} more are {NCHWC} ops" if len(found) > 1 else f"is a {NCHWC} op"
        raise OnnxImportError(f"{where}: {node_label(found[0])} {which}, which "
                              "ONNX Runtime writes for the CPU of the machine that saved the model "
                              "(ORT_ENABLE_ALL); the devices that run its backbone have other CPUs: import the "
                              "source model, or one saved at ORT_ENABLE_EXTENDED or below")


def _refuse_training_mode(graph: onnx.GraphProto, where: Path) -> None:
    """OnnxImportError naming a node exported in training mode: a Dropout whose training_mode
    input is true (or computed) drops values at random when run, and a BatchNormalization with
    training_mode = 1 normalizes by the batch's statistics. torch MLPs exported with
    TrainingMode.TRAINING were refused as 'fedge misread a node of the tail' (a Dropout), or
    imported silently with a backbone that mixed each batch (a BatchNorm before the tail)."""
    stored = stored_tensors(graph)
    for node in graph.node:
        if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
            flag = stored.get(node.input[2])
            if flag is not None and not numpy_helper.to_array(flag).any():
                continue
            how = f"its training_mode input is {'computed' if flag is None else 'true'}"
        elif node.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i for a in node.attribute):
            how = "training_mode = 1"
        else:
            continue
        raise OnnxImportError(f"{where}: {node.op_type} node {node.name or node.output[0]!r} runs in training mode "
                              f"({how}), so the model is not one function of its input: re-export it in inference "
                              "mode (torch: model.eval(), and torch.onnx.export's default training=TrainingMode.EVAL)")


def subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    """The graphs a node holds in its attributes (If's branches, Loop's and Scan's bodies)."""
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            yield attr.g
        yield from attr.graphs


CONSTANT_NUMBERS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                    "value_ints": np.int64}  # a Constant's other forms of a number or a list of them


def stored_tensors(graph: onnx.GraphProto) -> dict[str, TensorProto]:
    """The graph's stored values by tensor name: initializers, Constant nodes' `value` (or
    value_float(s), value_int(s)), a
    stored matrix's Transpose (torch without constant folding writes `x @ w.t()` as
    MatMul(x, Transpose(w)); that weight was once refused as computed), and an Identity of a
    stored tensor, or its Cast to float32 from float16 or double, or its DequantizeLinear
    (onnx_quantized.py): each the same numbers as ONNX
    Runtime computes (a Gemm whose weight came through either stayed frozen in the backbone, and no
    notice said so, since the notice names only dense layers with stored weights)."""
    out = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = node.attribute[0].t
        elif node.op_type == "Constant" and node.attribute and node.attribute[0].name in CONSTANT_NUMBERS:
            # value_floats=[nan, ...] or value_float=inf: a weight the NaN/Inf check once never saw
            value = np.asarray(helper.get_attribute_value(node.attribute[0]), CONSTANT_NUMBERS[node.attribute[0].name])
            out[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        elif node.op_type == "Transpose" and node.input[0] in out and len(out[node.input[0]].dims) == 2:
            perm = [list(a.ints) for a in node.attribute if a.name == "perm"]
            value = numpy_helper.to_array(out[node.input[0]])
            out[node.output[0]] = numpy_helper.from_array(value if perm == [[0, 1]] else value.T, node.output[0])
        elif node.op_type == "Identity" and node.input and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
        elif node.op_type == "Cast" and node.input and node.input[0] in out and _casts_to_float32(node, out):
            value = numpy_helper.to_array(out[node.input[0]]).astype(np.float32)
            out[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        elif node.op_type == "DequantizeLinear" and (value := dequantized(node, out)) is not None:
            out[node.output[0]] = numpy_helper.from_array(value, node.output[0])  # a quantized weight's float values
    return out


def _casts_to_float32(node: onnx.NodeProto, stored: dict[str, TensorProto]) -> bool:
    """A Cast to float32 of a stored float16, float32 or double tensor: numpy's astype gives
    ONNX Runtime's values (exact from float16, round to nearest from double)."""
    to = next((a.i for a in node.attribute if a.name == "to"), None)
    return to == TensorProto.FLOAT and stored[node.input[0]].data_type in (
        TensorProto.FLOAT16, TensorProto.FLOAT, TensorProto.DOUBLE)


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every stored tensor of a graph: initializers (sparse ones' values and indices too) and
    tensor attributes, in subgraphs too."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes) -> Iterator[TensorProto]:
    """The tensors nodes hold in attributes, whatever type the attribute claims: a Constant's
    `value` typed FLOAT but holding a tensor whose data was external went unresolved, and onnx's
    to_array read it from the working directory, not the model's folder."""
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sparse in (*([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []), *attr.sparse_tensors):
                yield from (sparse.values, sparse.indices)
        for sub in subgraphs(node):
            yield from _tensors(sub)


def _external_data(model: onnx.ModelProto, path: Path) -> tuple[dict[str, bytes], list]:
    """The data files the model's tensors name (location -> bytes), each checked to be a file in
    the model's folder (or below it) that holds every byte its tensors need; and for each such
    tensor, (tensor, location, offset, length)."""
    files, pending = {}, []
    for tensor in (*_tensors(model.graph), *_node_tensors(n for f in model.functions for n in f.node)):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        where = f"{path}: tensor {tensor.name!r} keeps its data in {location!r}"
        try:
            file = (path.parent / location).resolve()
            special = file.exists() and not file.is_file()  # a FIFO blocked the read forever
        except (ValueError, OSError, RuntimeError):  # a NUL byte, a name too long, a symlink loop (RuntimeError)
            raise OnnxImportError(f"{where}, which is no path fedge can follow (a NUL byte in it, a name too long "
                                  "or a symlink loop)") from None
        if not location or path.parent.resolve() not in file.parents:
            raise OnnxImportError(f"{where}, which is not a file in the model's folder")
        if special:
            raise OnnxImportError(f"{where}, which is not a regular file")
        if location not in files:
            try:
                files[location] = file.read_bytes()
            except OSError as exc:
                raise OnnxImportError(f"{where}, which cannot be read ({exc.strerror}); keep the .data file "
                                      "beside the .onnx file") from None
        try:
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
            need = itemsize * math.prod(tensor.dims)
            offset, length = int(info.get("offset", 0)), int(info.get("length", need))
        except (KeyError, TypeError, ValueError):  # an unknown data type, or offsets that are not numbers
            raise OnnxImportError(f"{where}, with an entry fedge cannot read ({dict(info)})") from None
        if tensor.data_type == TensorProto.STRING or length != need or offset < 0 \
                or offset + length > len(files[location]):
            raise OnnxImportError(f"{where} at bytes {offset}..{offset + length} ({need} needed), but the file "
                                  f"holds {len(files[location])}: it is truncated or not this model's")
        pending.append((tensor, location, offset, length))
    return files, pending


def _check_unchanged(path: Path, digest: str, expected: str) -> None:
    if digest != expected:
        raise OnnxImportError(f"{path}: sha256 {digest[:12]}... is not the imported file's ({expected[:12]}...); "
                              "re-import it")


def source_input_shape(value: onnx.ValueInfoProto, override: tuple[int, ...], where: str) -> tuple[int, ...]:
    """The per-example shape of the source's input `value` (dims after the batch), or `override`
    where it fits the dims the file fixes."""
    dims = value.type.tensor_type.shape.dim
    if not value.type.tensor_type.HasField("shape"):  # was told "rank 0, no batch dimension"
        raise OnnxImportError(f"{where}: input {value.name!r} declares no shape, so its rank is unknown; fedge "
                              "needs its batch dimension and per-example dims: re-export the model with its input's "
                              "shape (N, features...)")
    if len(dims) < 2:  # a rank-1 input was told to give input_shape, which it could not fit
        raise OnnxImportError(f"{where}: input {value.name!r} has rank {len(dims)}, no batch dimension; fedge "
                              "feeds batches (N, features...): re-export the model with a batch dimension first")
    per_example = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[1:])
    if override:
        if len(override) != len(per_example) or any(d is not None and d != o for d, o in zip(per_example, override)):
            raise OnnxImportError(f"{where}: input_shape {override} does not fit the input {value.name!r} "
                                  f"{per_example}")
        return tuple(override)
    if None in per_example:
        raise OnnxImportError(f"{where}: input {value.name!r} has per-example shape {per_example} with free "
                              "dimensions; give input_shape (e.g. --input-shape 3,48,192)")
    return per_example
