"""ONNX Runtime training artifacts (the `ort-training` backend) for a ModelSpec.

    ort/training_model.onnx     forward + loss + ORT-generated gradient graph (com.microsoft ops)
    ort/checkpoint              initial trainable and frozen params (ORT flatbuffer checkpoint)
    ort/optimizer_sgd.onnx      ORT SGDOptimizerV2: P -= lr * g
    ort/optimizer_adamw.onnx    ORT AdamWOptimizer switched to torch mode (adam_mode=0); the
                                backend rewrites betas/eps/weight_decay per run

The training model is built from a loss graph on embeddings whose gradient is exactly the
portable train step's (models/graphs.py):

    inputs   z (N, *embedding_shape), y (N,) int64, mu [], and per shared param P:
             P.global (FedProx anchor), P.correction (SCAFFOLD c - c_i)
    loss     sum_heads CE + mu/2 * sum_P ||P - P.global||^2 + sum_P sum(P * P.correction)
    dL/dP  = dCE/dP + mu * (P - P.global) + P.correction

The trainable params (shared + personal) are what ORT differentiates; frozen dense params ride
in the checkpoint as frozen params. The training build of onnxruntime is needed here (and on
the device): `pip install 'fedge[ort-training]'`.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fedge.edge_runtime.kernel.artifact_layout import BAKED_ADAMW, OPTIMIZER_FILES, ORT_DIR, set_adamw_attributes
from fedge.edge_runtime.kernel.ort_loader import load_ort_training

from .graphs import emit_cross_entropy, emit_forward
from .onnx_builder import GraphBuilder
from .params import param_infos
from .spec import ModelSpec

# Every name generate_ort_artifacts leaves in ORT_DIR: an older build may be replaced, a folder
# holding anything else is the user's and is never deleted.
ORT_FILES = frozenset({"training_model.onnx", "checkpoint", *OPTIMIZER_FILES.values()})


def _check_replaceable(target: Path) -> None:
    foreign = sorted(p.name for p in target.iterdir() if p.name not in ORT_FILES) if target.is_dir() else [target.name]
    if foreign:
        from fedge.edge_runtime.kernel.errors import ConfigError

        raise ConfigError(f"{target} holds files fedge did not write ({', '.join(foreign[:3])}); "
                          f"move them, or build into another folder")


def build_loss_model(spec: ModelSpec, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The forward + regularized loss graph ORT differentiates; params are initializers."""
    infos = param_infos(spec)
    trainable = [p for p in infos if p.role != "frozen"]
    gb = GraphBuilder(f"{spec.name}-ort-loss")
    z = gb.input("z", ["N", *spec.embedding_shape()])
    y = gb.input("y", ["N"], TensorProto.INT64)
    mu = gb.input("mu", [])
    anchors = {}
    for p in trainable:
        if p.role == "shared":
            anchors[p.name] = (gb.input(f"{p.name}.global", list(p.shape)),
                               gb.input(f"{p.name}.correction", list(p.shape)))
    params = {p.name: gb.initializer(p.name, values[p.name]) for p in trainable}
    _, _, logits = emit_forward(gb, spec, values, z, params)  # adds the frozen dense params it uses

    data_loss = None
    for value in logits.values():
        ce = emit_cross_entropy(gb, value, y)
        data_loss = ce if data_loss is None else gb.add(data_loss, ce)
    loss = data_loss
    prox = corr = None
    for name, (anchor, correction) in anchors.items():
        d = gb.sub(params[name], anchor)
        sq = gb.op("ReduceSum", [gb.mul(d, d)], keepdims=0)  # no axes: all elements -> []
        dot = gb.op("ReduceSum", [gb.mul(params[name], correction)], keepdims=0)
        prox = sq if prox is None else gb.add(prox, sq)
        corr = dot if corr is None else gb.add(corr, dot)
    if prox is not None:
        # A Constant node, not gb.const: GraphBuilder stores 0-d initializers as shape (1,).
        half = gb.op("Constant", [], value=numpy_helper.from_array(np.array(0.5, np.float32)))
        loss = gb.add(gb.add(loss, gb.mul(gb.mul(mu, half), prox)), corr)
    gb.op_to("Identity", [loss], "loss")  # first output: ORT differentiates this one
    gb.op_to("Identity", [data_loss], "data_loss")  # what step() reports, as the portable graph does
    gb.output("loss", [])
    gb.output("data_loss", [])
    return gb.model(doc=f"fedge ORT-training loss graph of {spec.name}")


def _optimizer_model(onnxblock, block, trainable: list[onnx.TensorProto]) -> onnx.ModelProto:
    with onnxblock.empty_base(opset_version=17) as accessor:
        block((trainable, []))  # the block reads only the trainable params' dtype
        model = accessor.model
    # onnxblock names values "onnx::<hint>::<process-wide counter>"; drop the counter so two
    # builds write identical bytes (the manifest hashes them).
    rename = {}
    for node in model.graph.node:
        node.name = node.op_type
        for i, out in enumerate(node.output):
            rename[out] = node.output[i] = re.sub(r"^onnx::(.*)::\d+$", r"\1", out)
        node.input[:] = [rename.get(n, n) for n in node.input]
    for value in model.graph.output:
        value.name = rename.get(value.name, value.name)
    return model


@contextmanager
def _quiet_gradient_builder():
    """generate_artifacts optimizes the graph under a default SessionOptions, which logs every
    graph transformer at INFO to stderr; give it one that logs errors only."""
    utils = load_ort_training("onnxblock._training_graph_utils")
    original = utils.SessionOptions

    def quiet():
        opts = original()
        opts.log_severity_level = 3
        return opts

    utils.SessionOptions = quiet
    try:
        yield
    finally:
        utils.SessionOptions = original


def generate_ort_artifacts(spec: ModelSpec, values: dict[str, np.ndarray], outdir: str | Path) -> list[str]:
    """Write the ORT training artifacts under outdir/ort/; return the files written (relative)."""
    artifacts = load_ort_training("artifacts")
    onnxblock = load_ort_training("onnxblock")
    outdir = Path(outdir)
    infos = param_infos(spec)
    model = build_loss_model(spec, values)
    initializers = {init.name for init in model.graph.initializer}
    requires_grad = [p.name for p in infos if p.role != "frozen"]
    frozen = [p.name for p in infos if p.role == "frozen" and p.name in initializers]  # backbone params are not here

    target = outdir / ORT_DIR
    with tempfile.TemporaryDirectory(dir=outdir, prefix=".ort-") as tmp:
        # loss=None: the model's first output is the loss already, so ORT adds no loss block.
        with _quiet_gradient_builder():
            artifacts.generate_artifacts(model, requires_grad=requires_grad, frozen_params=frozen, loss=None,
                                         artifact_directory=tmp)
        Path(tmp, "eval_model.onnx").unlink()  # predict() runs the portable eval.onnx instead
        trainable = [numpy_helper.from_array(np.ascontiguousarray(values[n], np.float32), n) for n in requires_grad]
        sgd = _optimizer_model(onnxblock, onnxblock.optim.SGD(), trainable)
        adamw = _optimizer_model(onnxblock, onnxblock.optim.AdamW(), trainable)
        set_adamw_attributes(adamw, *BAKED_ADAMW)  # and adam_mode=0: torch semantics
        onnx.save(sgd, Path(tmp, OPTIMIZER_FILES["sgd"]))
        onnx.save(adamw, Path(tmp, OPTIMIZER_FILES["adamw"]))
        if target.exists():
            _check_replaceable(target)
            shutil.rmtree(target)
        Path(tmp).rename(target)
    return sorted(p.relative_to(outdir).as_posix() for p in target.rglob("*") if p.is_file())
