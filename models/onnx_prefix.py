"""The frozen backbone of an imported model: the source graph up to the cut (onnx_import.py),
cut out as onnx.utils.Extractor does (onnx_extract.py), its input renamed x with a free batch
dimension, its output the cut flattened to z (N, features), and checked to run on any batch
(onnx_batch.py)."""

from __future__ import annotations

import math
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from .onnx_batch import check_any_batch, free_fixed_batch
from .onnx_extract import extract
from .onnx_finite import check_backbone_finite
from .onnx_scope import free_prefix, rename_everywhere
from .onnx_source import OnnxImportError
from .onnx_unfuse import unfuse_gemms
from .spec import ModelSpec


def extract_prefix(spec: ModelSpec) -> onnx.ModelProto | None:
    """The source graph up to the cut, as x (N, *input_shape) -> z (N, features); None when
    the cut is the model's input (no prefix)."""
    from .onnx_import import _checked_source

    model, g = _checked_source(spec)
    source_input = g.input.name
    if spec.onnx_cut == source_input:  # no backbone: the tail reads the input as it is
        if math.prod(spec.input_shape) != spec.onnx_features:  # a weight of 5 rows on 4 input features once built
            raise OnnxImportError(f"{spec.onnx}: the input {source_input!r} gives {math.prod(spec.input_shape)} "
                                  f"features per example {tuple(spec.input_shape)}, but the first layer takes "
                                  f"{spec.onnx_features}: the file's weights do not fit its graph")
        return None
    check_backbone_finite(model, spec.onnx_cut, spec.onnx)  # a spec file's cut, not only import_spec's
    source_batch = 0
    for inp in model.graph.input:  # a free batch dim, and the per-example dims the spec fixed
        if inp.name == source_input:
            dims = inp.type.tensor_type.shape.dim
            source_batch = dims[0].dim_value if dims[0].HasField("dim_value") else 0
            dims[0].Clear()
            dims[0].dim_param = "N"
            for d, size in zip(dims[1:], spec.input_shape):
                d.Clear()
                d.dim_value = size
    del model.graph.value_info[:]  # inferred for the source's fixed batch; extract infers again
    # extract needs the cut's type; shape inference cannot always follow a computed Reshape.
    model.graph.value_info.append(helper.make_tensor_value_info(spec.onnx_cut, TensorProto.FLOAT, None))
    prefix = extract(model, source_input, spec.onnx_cut)
    graph = prefix.graph
    # x and z are the backbone's interface: a source tensor of either name moves aside, to a name
    # the source does not use (a fedge export imported again, and again, holds x__source, z__source
    # and a node fedge_cut already: the same names twice made ONNX Runtime refuse the backbone).
    rename = {"x": free_prefix(prefix, "x__source"), "z": free_prefix(prefix, "z__source"), source_input: "x"}
    rename_everywhere(graph, rename)  # in If/Loop/Scan bodies too, which may read these by their outer names
    cut = rename.get(spec.onnx_cut, spec.onnx_cut)
    graph.node.append(helper.make_node("Flatten", [cut], ["z"], name=free_prefix(prefix, "fedge_cut"), axis=1))
    unfuse_gemms(prefix)  # ONNX Runtime's FusedGemm as standard ops: the export needs no contrib ops
    if not any(o.domain in ("", "ai.onnx") for o in prefix.opset_import):
        # a source of ai.onnx.ml ops alone (a Binarizer, a Scaler): that Flatten made the backbone
        # "not a valid ONNX model: No opset import for domain ''"; Flatten(axis=1) is opset 1's.
        # A local function's own default-domain import must equal the model's (the checker), so
        # the version is the functions' where they import one.
        versions = [o.version for f in prefix.functions for o in f.opset_import if o.domain in ("", "ai.onnx")]
        prefix.opset_import.append(helper.make_opsetid("", max(versions, default=13)))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", spec.onnx_features]))
    del graph.value_info[:]
    prefix.doc_string = f"fedge backbone: {Path(spec.onnx).name} up to {spec.onnx_cut!r}"
    # IR 3 lists each initializer as a graph input too (old torch exports, the onnx wheel's 'light'
    # ResNet, VGG, ...); the backbone has the one input x, which IR 3 calls invalid ("W in initializer
    # but not in graph input"). From IR 4 an initializer is a constant, as the backbone means it.
    prefix.ir_version = max(prefix.ir_version, 4)
    try:
        onnx.checker.check_model(prefix)
    except onnx.checker.ValidationError as exc:
        raise OnnxImportError(f"{spec.onnx}: the backbone cut from it is not a valid ONNX model: "
                              f"{str(exc).splitlines()[0][:300]}") from None
    unchanged = None
    if source_batch > 0:  # only a fixed batch is rewritten: keep the prefix as it was to compare
        unchanged = onnx.ModelProto()
        unchanged.CopyFrom(prefix)
    changed = free_fixed_batch(prefix, source_batch)
    check_any_batch(prefix, unchanged if changed else None, tuple(spec.input_shape), source_batch, spec.onnx,
                    spec.onnx_features)
    return prefix

