"""Zoo of models written elsewhere, imported by `fedge build-artifacts --from-onnx`'s automatic cut:
torch.onnx.export MLPs and small CNNs (GELU, Sigmoid, Tanh, LeakyReLU, Softmax/LogSoftmax at the
end, Dropout, BatchNorm1d in the tail, Flatten/Reshape before it, Linear without bias,
`.double().float()`, `x @ W.T`, `(W @ x.T).T`, F.linear, opsets 13/17/18), skl2onnx MLPClassifier
(relu, tanh, logistic) and LogisticRegression, and some of them quantized by
onnxruntime.quantization (quantize_dynamic; quantize_static QDQ and QOperator; QDQ and dynamic
of the convolutions only). Each is imported, run as imported against ONNX Runtime on the source
(1e-5), and trained 12 SGD steps on every backend against the float64 reference
(tests/models/import_check.py). From the repository root, in the test venv:

    .venv-test/bin/python benchmarks/results/2026-12-07-import-zoo/run_zoo.py /tmp/zoo

On 2026-12-07 (onnx 1.16.2, onnxruntime-training 1.19.2, torch 2.13.0, skl2onnx 1.20.0): 63
variants (3 the quantizer itself failed on: LogisticRegression's ai.onnx.ml graph). Before the
fixes (8e443e1) 25 imported and trained, 5 froze a layer that trains (fc1 before
`.double().float()`; `(W @ x.T + b).T` and `torch.einsum("bi,oi->bo", x, W)`, both with no
notice; a layer computed in double; a Linear on (N, 1, 64) then squeezed), 30 were refused by
name (the QDQ ones naming a DequantizeLinear weight as computed, the dynamic and QOperator ones
listing ops). After: 29 import and train, 2 freeze a layer with a notice (computed in double; the
unsqueezed Linear), 29 are refused by name (quantized ones saying so, QDQ ones naming the
QuantizeLinear between layers). No traceback. runs.json: every outcome, before and after.
"""

import io
import json
import logging
import sys  # noqa: E401
import traceback
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.trainer import make_backend
from fedge.models.build import build_artifacts
from fedge.models.onnx_import import ImportOptions, import_spec
from fedge.models.onnx_source import OnnxImportError
from tests.models.import_check import HAVE_ORT_TRAINING, _digits_images, check_backends_agree
from tests.torch_export import export

OUT = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/import-zoo/run")
OUT.mkdir(parents=True, exist_ok=True)
ONLY = sys.argv[2].split(",") if len(sys.argv) > 2 else None


class DoubleFloat(nn.Module):
    def __init__(s):
        super().__init__()
        s.fc1, s.fc2, s.fc3 = nn.Linear(64, 32), nn.Linear(32, 16), nn.Linear(16, 10)

    def forward(s, x):
        h = torch.relu(s.fc1(x).double().float())
        return s.fc3(torch.relu(s.fc2(h)))


class DoubleFloatIn(nn.Module):
    def __init__(s):
        super().__init__()
        s.fc1, s.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(s, x):
        return s.fc2(torch.relu(s.fc1(x.double().float())))


class DoubleWhole(nn.Module):  # computes the layer in double
    def __init__(s):
        super().__init__()
        s.fc1, s.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(s, x):
        return s.fc2(torch.relu(s.fc1.double()(x.double())).float())


class MatmulWT(nn.Module):  # x @ W.T + b
    def __init__(s):
        super().__init__()
        s.w1, s.b1 = nn.Parameter(torch.randn(32, 64) * 0.1), nn.Parameter(torch.randn(32) * 0.1)
        s.w2, s.b2 = nn.Parameter(torch.randn(10, 32) * 0.1), nn.Parameter(torch.randn(10) * 0.1)

    def forward(s, x):
        return torch.relu(x @ s.w1.T + s.b1) @ s.w2.T + s.b2


class WxT(MatmulWT):  # (W @ x.T).T + b
    def forward(s, x):
        h = torch.relu((s.w1 @ x.T).T + s.b1)
        return (s.w2 @ h.T).T + s.b2


class WxTBias(nn.Module):  # (W @ x.T + b[:,None]).T
    def __init__(s):
        super().__init__()
        s.w1 = nn.Parameter(torch.randn(32, 64) * 0.1)
        s.b1 = nn.Parameter(torch.randn(32, 1) * 0.1)
        s.fc2 = nn.Linear(32, 10)

    def forward(s, x):
        h = torch.relu((s.w1 @ x.T + s.b1).T)
        return s.fc2(h)


class FLinear(nn.Module):
    def __init__(s):
        super().__init__()
        s.w1 = nn.Parameter(torch.randn(32, 64) * 0.1)
        s.b1 = nn.Parameter(torch.randn(32) * 0.1)
        s.w2 = nn.Parameter(torch.randn(10, 32) * 0.1)

    def forward(s, x):
        return F.linear(torch.tanh(F.linear(x, s.w1, s.b1)), s.w2)


class MatmulW(nn.Module):  # weights stored (in, out)
    def __init__(s):
        super().__init__()
        s.w1 = nn.Parameter(torch.randn(64, 32) * 0.1)
        s.w2 = nn.Parameter(torch.randn(32, 10) * 0.1)

    def forward(s, x):
        return torch.relu(torch.matmul(x, s.w1)) @ s.w2


class Einsum(nn.Module):  # torch.einsum("bi,oi->bo", x, W)
    def __init__(s):
        super().__init__()
        s.w1, s.fc2 = nn.Parameter(torch.randn(32, 64) * 0.1), nn.Linear(32, 10)

    def forward(s, x):
        return s.fc2(torch.relu(torch.einsum("bi,oi->bo", x, s.w1)))


class Unsqueezed(nn.Module):  # fc1 on (N, 1, 64), then squeezed
    def __init__(s):
        super().__init__()
        s.fc1, s.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(s, x):
        return s.fc2(torch.relu(s.fc1(x.unsqueeze(1)).squeeze(1)))


class Residual(nn.Module):  # h + relu(fc1(h)): no chain, fc0 and fc1 stay frozen
    def __init__(s):
        super().__init__()
        s.fc0, s.fc1, s.fc2 = nn.Linear(64, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(s, x):
        h = torch.relu(s.fc0(x))
        return s.fc2(h + torch.relu(s.fc1(h)))


class Reshape(nn.Module):
    def forward(s, x):
        return x.reshape(x.shape[0], -1)


def cnn(*tail):
    return lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), *tail)


def seq(*layers):
    return lambda: nn.Sequential(*layers)


TORCH = {  # name: (factory, images, kind, expected hidden trainable layers, opset)
    "gelu": (seq(nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10)), False, "logits", 1, 17),
    "gelu_tanh": (seq(nn.Linear(64, 32), nn.GELU(approximate="tanh"), nn.Linear(32, 10)), False, "logits", 0, 17),
    "sigmoid": (
        seq(nn.Linear(64, 32), nn.Sigmoid(), nn.Linear(32, 16), nn.Sigmoid(), nn.Linear(16, 10)),
        False,
        "logits",
        2,
        13,
    ),
    "tanh_softmax": (seq(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10), nn.Softmax(dim=1)), False, "probs", 1, 18),
    "leaky_logsoftmax": (
        seq(nn.Linear(64, 32), nn.LeakyReLU(0.2), nn.Linear(32, 10), nn.LogSoftmax(dim=1)),
        False,
        "logprobs",
        1,
        17,
    ),
    "dropout": (seq(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10)), False, "logits", 1, 13),
    "bn1d_tail": (seq(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)), False, "logits", 1, 18),
    "nobias": (seq(nn.Linear(64, 32, bias=False), nn.ReLU(), nn.Linear(32, 10, bias=False)), False, "logits", 1, 17),
    "cnn_flatten": (cnn(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10)), True, "logits", 1, 17),
    "cnn_reshape_13": (cnn(Reshape(), nn.Linear(64, 16), nn.GELU(), nn.Linear(16, 10)), True, "logits", 1, 13),
    "cnn_flatten_18_softmax": (
        cnn(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10), nn.Softmax(1)),
        True,
        "probs",
        1,
        18,
    ),
    "double_float": (DoubleFloat, False, "logits", 2, 17),
    "double_float_in": (DoubleFloatIn, False, "logits", 1, 17),
    "double_whole": (DoubleWhole, False, "logits", 1, 17),
    "matmul_wT": (MatmulWT, False, "logits", 1, 17),
    "matmul_wT_13": (MatmulWT, False, "logits", 1, 13),
    "WxT": (WxT, False, "logits", 1, 17),
    "WxT_bias": (WxTBias, False, "logits", 1, 17),
    "F_linear": (FLinear, False, "logits", 1, 18),
    "einsum": (Einsum, False, "logits", 1, 17),
    "unsqueeze_squeeze": (Unsqueezed, False, "logits", 1, 17),
    "residual": (Residual, False, "logits", 0, 17),
    "silu": (seq(nn.Linear(64, 32), nn.SiLU(), nn.Linear(32, 10)), False, "logits", 0, 17),
    "relu6": (seq(nn.Linear(64, 32), nn.ReLU6(), nn.Linear(32, 10)), False, "logits", 0, 17),
    "matmul_w": (MatmulW, False, "logits", 1, 17),
}


def as_probs(logits, kind):
    s = logits - logits.max(1, keepdims=True)
    lp = s - np.log(np.exp(s).sum(1, keepdims=True))
    return {"logits": logits, "probs": np.exp(lp), "logprobs": lp}[kind]


def run_source(path, x, out_index=0):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[out_index]


def check(name, path, x, y, kind, expected_hidden, out_index=0, tol=1e-5):
    log = io.StringIO()
    h = logging.StreamHandler(log)
    logging.getLogger("fedge").addHandler(h)
    try:
        try:
            spec = import_spec(ImportOptions(str(path), head="global"))
        except (OnnxImportError, ConfigError) as e:
            return "NAMED", str(e)[:300]
        hidden = len(spec.layers)
        art = path.parent / f"{path.stem}-art"
        try:
            manifest = build_artifacts(spec, art, ort_training=HAVE_ORT_TRAINING)
        except (OnnxImportError, ConfigError) as e:
            return "NAMED(build)", str(e)[:300]
        rt = ModelRuntime(art, expected_model_id=manifest.model_id)
        be = make_backend("portable", art, manifest, "sgd")
        logits = be.predict(rt.initial("shared"), rt.embed(x))["global"]
        want = run_source(path, x, out_index)
        got = as_probs(logits, kind)
        if want.ndim == 1:
            want = np.stack([1 - want, want], 1)
        diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
        check_backends_agree(art, x, y)
        notes = f"cut={spec.onnx_cut} hidden={hidden}/{expected_hidden} diff={diff:.1e}"
        warn = log.getvalue().strip().replace("\n", " | ")[:200]
        if hidden < expected_hidden:
            return "BUG(frozen)", notes + " " + warn
        if not diff <= tol:
            return "BUG(output)", notes + " " + warn
        return "OK", notes + (" WARN " + warn if warn else "")
    except Exception as e:
        where = traceback.extract_tb(e.__traceback__)[-1]
        return "BUG(traceback)", f"{type(e).__name__}: {str(e)[:200]} @ {Path(where.filename).name}:{where.lineno}"
    finally:
        logging.getLogger("fedge").removeHandler(h)


def quantized(path, x_cal, input_name, tail_ops=("MatMul", "Gemm")):
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    class R(CalibrationDataReader):
        def __init__(s):
            s.it = iter([{input_name: x_cal[i : i + 8]} for i in range(0, 32, 8)])

        def get_next(s):
            return next(s.it, None)

    out = {}
    variants = {
        "qdyn": lambda src, dst: quantize_dynamic(src, dst, weight_type=QuantType.QInt8),
        "qdq": lambda src, dst: quantize_static(src, dst, R(), quant_format=QuantFormat.QDQ),
        "qop": lambda src, dst: quantize_static(src, dst, R(), quant_format=QuantFormat.QOperator),
        "qdq_conv_only": lambda src, dst: quantize_static(
            src, dst, R(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"]
        ),
        "qdyn_conv_only": lambda src, dst: quantize_dynamic(src, dst, op_types_to_quantize=["Conv"]),
    }
    for q, fn in variants.items():
        if "conv" in q and "cnn" not in path.stem:
            continue
        dst = path.with_name(f"{path.stem}-{q}.onnx")
        try:
            fn(str(path), str(dst))
            out[q] = dst
        except Exception as e:
            out[q] = "QUANT-FAIL " + str(e)[:120]
    return out


QUANTIZE = {
    "nobias",
    "cnn_flatten",
    "cnn_reshape_13",
    "tanh_softmax",
    "sigmoid",
    "matmul_wT",
    "sk_relu",
    "sk_logreg",
    "gelu",
    "leaky_logsoftmax",
}


def _quantized_rows(rows, name, path, x, y, kind, hidden, input_name, out_index):
    """Quantize the source each way, import each; a conv-only variant keeps the float tail's layers."""
    for q, qp in quantized(path, x, input_name).items():
        if isinstance(qp, str):  # the quantizer itself failed
            rows.append((f"{name}-{q}", qp, ""))
        else:
            rows.append((f"{name}-{q}", *check(q, qp, x, y, kind, hidden if "only" in q else 0, out_index=out_index)))
        print(rows[-1], flush=True)


def main():
    rows = []
    xd, yd = _digits_images(64)
    xf = xd.reshape(len(xd), -1)
    for name, (make, images, kind, hidden, opset) in TORCH.items():
        if ONLY and name not in ONLY:
            continue
        torch.manual_seed(0)
        m = make()
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d):
                g = torch.Generator().manual_seed(1)
                mod.running_mean.copy_(torch.rand(mod.num_features, generator=g) - 0.5)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
        x = xd if images else xf
        path = OUT / f"{name}.onnx"
        try:
            export(torch, m, torch.from_numpy(x[:2]), path, opset=opset)
        except Exception as e:
            rows.append((name, "EXPORT-FAIL", str(e)[:200]))
            print(rows[-1], flush=True)
            continue
        with torch.no_grad():
            tout = m(torch.from_numpy(x)).numpy()
        src = run_source(path, x)
        assert np.abs(tout - src).max() < 1e-4, (name, np.abs(tout - src).max())
        rows.append((name, *check(name, path, x, yd, kind, hidden)))
        print(rows[-1], flush=True)
        if name in QUANTIZE:
            _quantized_rows(rows, name, path, x, yd, kind, hidden, "input", 0)
    # sklearn
    import warnings

    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    warnings.filterwarnings("ignore")
    sk = {
        "sk_relu": MLPClassifier((16,), activation="relu", max_iter=50, random_state=0),
        "sk_tanh": MLPClassifier((16, 8), activation="tanh", max_iter=50, random_state=0),
        "sk_logistic": MLPClassifier((16,), activation="logistic", max_iter=50, random_state=0),
        "sk_logreg": LogisticRegression(max_iter=200),
    }
    for name, est in sk.items():
        if ONLY and name not in ONLY:
            continue
        est.fit(xf, yd)
        path = OUT / f"{name}.onnx"
        onx = to_onnx(est, xf[:1].astype(np.float32), options={id(est): {"zipmap": False}})
        onnx.save(onx, path)
        hidden = len(getattr(est, "hidden_layer_sizes", ()))
        rows.append((name, *check(name, path, xf, yd, "probs", hidden, out_index=1)))
        print(rows[-1], flush=True)
        if name in QUANTIZE:
            _quantized_rows(rows, name, path, xf, yd, "probs", 0, onx.graph.input[0].name, 1)
    json.dump(rows, open(OUT / "rows.json", "w"), indent=1)


main()
