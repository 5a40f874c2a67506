"""After an import: does the model fedge built compute what the source computes?

The backbone is checked against the source when it is cut out (onnx_batch.check_any_batch);
the tail is fedge's own reading of the source's dense layers (their weights, folded
temperatures and transposes, activations), and each misreading the helpers found (a softmax
over the batch axis, a prior added after the logits, a scalar bias) gave a model that ran and
trained and was silently another function. So the build runs both on the same random inputs:
the source in ONNX Runtime up to the tensor the tail ends at (the kept classifier's logits, or
the last hidden layer's output when a new head replaces it), and fedge's backbone plus a plain
numpy forward of the tail as the spec now holds it. A difference is an OnnxImportError naming
the tensor; a source that ONNX Runtime cannot run alone, or that gives non-finite values on
random inputs, is skipped with a log line (the backbone check stands).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx

from fedge.edge_runtime.kernel.activations import activate

from .onnx_probe import quiet_session, run_to
from .onnx_source import OnnxImportError
from .spec import ModelSpec

log = logging.getLogger("fedge.models")
EXAMPLES, TOLERANCE = 4, 1e-4  # relative to the largest |value| of the source's tensor (float32 sums)
SATURATION = 1e-4  # a probability this near 0 or 1 is compared as itself, not as its logit


def check_import(spec: ModelSpec, values: dict[str, np.ndarray], backbone: onnx.ModelProto | None) -> None:
    """OnnxImportError when fedge's model and the source differ where the tail ends (module doc)."""
    from .export import dense_tail
    from .onnx_import import _checked_source, parse_tail

    if not spec.onnx_keep_head and not spec.layers:
        return  # a new head on the cut: nothing of the source's tail is used, and the backbone is checked
    source, g = _checked_source(spec)
    tail = parse_tail(g, spec.onnx_cut)
    target = tail[-1].output if spec.onnx_keep_head else tail[len(spec.layers) - 1].output
    head = ("personal" if spec.head == "personal" else "global") if spec.onnx_keep_head else None  # kept: any head
    dims = g.input.type.tensor_type.shape.dim
    batch = dims[0].dim_value if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else EXAMPLES
    x = np.random.default_rng(0).standard_normal((batch, *spec.input_shape)).astype(np.float32)
    want = _run_source(source, g.input.name, target, x, spec.onnx)
    if want is None:
        return
    h = _run_backbone(backbone, x) if backbone is not None else x.reshape(batch, -1).astype(np.float64)
    for i, (w, b, activation, slope) in enumerate(dense_tail(spec, values, head)):
        if h.shape[1] != w.shape[0]:  # a hostile file's weights that do not fit what reaches them
            raise OnnxImportError(f"{spec.onnx}: layer {i + 1} of the tail takes {w.shape[0]} features, but "
                                  f"{h.shape[1]} reach it on random inputs: the file's weights do not fit its graph")
        h = activate(activation, h @ w.astype(np.float64) + b, slope)
    if spec.onnx_keep_head and tail[-1].gives == "probabilities":  # a LinearClassifier's: softmax of the logits
        h = np.exp(h - h.max(axis=1, keepdims=True))
        h /= h.sum(axis=1, keepdims=True)
    elif spec.onnx_keep_head and want.shape[-1] == 1 and h.shape[1] == 2:  # a binary Sigmoid head: logits [0, z]
        h = h[:, 1:] - h[:, :1]
    want = want.reshape(batch, -1).astype(np.float64)
    if spec.onnx_keep_head and tail[-1].gives == "sigmoid" and h.shape == want.shape:
        # a FusedGemm's: the source's tensor is p = sigmoid(z) (onnx_gemm.py). Compared as z = logit(p)
        # where float32 p still resolves it: on p, atol 1e-4 missed an error of 0.05 in z once |z| > 5.5
        h, want = _as_logits(h, want)
    scale = max(1.0, float(np.abs(want).max()))
    if h.shape != want.shape or not np.allclose(h, want, rtol=TOLERANCE, atol=TOLERANCE * scale):
        diff = float(np.abs(h - want).max()) if h.shape == want.shape else float("nan")
        raise OnnxImportError(f"{spec.onnx}: the imported model does not compute what the source does at "
                              f"{target!r} (shapes {h.shape} and {want.shape}, largest difference {diff:.3g} on random "
                              "inputs): fedge misread a node of the tail; cut after it (--cut) or give --classes K")


def _as_logits(z: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """fedge's z and the source's p as logits where SATURATION < p < 1 - SATURATION, as probabilities elsewhere."""
    inside = (p > SATURATION) & (p < 1 - SATURATION)
    clipped = np.clip(p, SATURATION, 1 - SATURATION)
    return np.where(inside, z, 1 / (1 + np.exp(-z))), np.where(inside, np.log(clipped / (1 - clipped)), p)


def _run_source(source: onnx.ModelProto, input_name: str, target: str, x: np.ndarray, where: str):
    try:
        (out,) = run_to(source, {input_name: x}, [target])
    except Exception as exc:  # noqa: BLE001 - ORT's own types; the backbone check stands
        log.info("%s: whole-model check skipped: ONNX Runtime cannot run the source up to %r (%s)", where, target,
                 str(exc).splitlines()[0][:200])
        return None
    if not np.all(np.isfinite(out)):
        log.info("%s: whole-model check skipped: the source gives non-finite values on random inputs", where)
        return None
    return np.asarray(out)


def _run_backbone(backbone: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    (z,) = quiet_session(backbone).run(["z"], {"x": x})
    return np.asarray(z, np.float64)
