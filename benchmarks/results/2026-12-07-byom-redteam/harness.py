"""One variant of the BYOM red-team probe (run_probe.py): import through the CLI, then check.

An import must (a) give the source's outputs as imported (portable backend, global head, 1e-5),
(b) train as the float64 numpy reference does (tests/models/import_check.check_backends_agree:
portable, and ORT training where installed, 12 SGD steps, 1e-5), and (c) round-trip: one real
training task on a DeviceRuntime, `fedge device export`, and the exported file run by stock
onnxruntime (STOCK_PYTHON, a venv with `pip install onnxruntime numpy`; unset: this venv's) gives
the device's own personal-head logits to 1e-5. A refusal must be a named error: exit 2, no traceback."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import onnxruntime as ort

from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.manifest import load_manifest
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, TrainTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.trainer import make_backend
from fedge.tools.cli import main
from tests.models.import_check import check_backends_agree

STOCK_PYTHON = os.environ.get("STOCK_PYTHON", sys.executable)
RUN_EXPORT = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[3], s.run(["logits"], {"x": np.load(sys.argv[2])})[0])
"""


def source_outputs(path, x, fixed: bool, out_index: int) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    if fixed:  # a batch fixed at 1: one example at a time
        return np.concatenate([np.asarray(sess.run(None, {name: x[i:i + 1]})[out_index]) for i in range(len(x))])
    return np.asarray(sess.run(None, {name: x})[out_index])


def as_kind(logits: np.ndarray, kind: str) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return {"logits": logits, "probs": np.exp(logp), "logprobs": logp}[kind]


def export_round_trip(art: Path, manifest, x: np.ndarray, y: np.ndarray, tmp: Path) -> str:
    state = tmp / "state"
    device_art = state / "devA" / "artifacts" / manifest.model_id
    shutil.copytree(art, device_art)
    n = len(x) * 3 // 4
    device = DeviceRuntime("devA", LocalData(x[:n], y[:n], x[n:], y[n:]), {manifest.model_id: device_art}, state,
                           seed=1)
    shared = device.model(manifest.model_id).initial("shared")
    device.handle_task(TrainTask(round_id=1, task_id="t1", device_id="devA", model_id=manifest.model_id,
                                 model_version=0, params=encode_dense(shared), seed=9, compression=CompressionSpec(),
                                 hyper=TaskHyper(epochs=2, batch_size=8, lr=0.05, optimizer="sgd")))
    personal = DeviceStore(state / "devA", manifest.model_id).load_personal()
    (tmp / "dev.toml").write_text(f'device_id = "devA"\nstate_dir = "{state}"\n[data]\nnpz = "unused.npz"\n')
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["device", "export", "--config", str(tmp / "dev.toml"), "--out", str(tmp / "exported.onnx")])
    if rc != 0:
        return f"device export rc={rc}: {err.getvalue().strip()[-300:]}"
    np.save(tmp / "x_test.npy", x[n:])
    subprocess.run([STOCK_PYTHON, "-I", "-c", RUN_EXPORT, str(tmp / "exported.onnx"), str(tmp / "x_test.npy"),
                    str(tmp / "logits.npy")], check=True, timeout=120)
    model = device.model(manifest.model_id)
    heads = device._backend(model, "sgd").predict({**shared, **personal}, model.embed(x[n:]))
    diff = float(np.abs(np.load(tmp / "logits.npy") - heads.get("personal", heads.get("global"))).max())
    return "ok" if diff < 1e-5 else f"exported logits differ by {diff:.2e}"


def probe(name: str, path: Path, x, y, fixed=False, kind="logits", out_index=0, source=None) -> dict:
    """kind: what the source's output is (logits, probs, logprobs; none: not compared)."""
    art, record = path.parent / "art", {"variant": name}
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main(["build-artifacts", "--from-onnx", str(path), str(art), "--head", "global"])
    except BaseException:  # noqa: BLE001 - what the probe looks for
        return {**record, "outcome": "TRACEBACK", "detail": traceback.format_exc()[-600:]}
    text = (out.getvalue() + err.getvalue()).strip()
    if rc != 0:
        return {**record, "outcome": "TRACEBACK" if "Traceback" in text else "named error",
                "detail": text.split(f"{path}: ", 1)[-1][-400:]}
    record["imported"] = next((line.split(": ", 1)[1] for line in out.getvalue().splitlines()
                               if line.startswith("imported ")), "")
    if "stay frozen" in err.getvalue():
        record["notice"] = err.getvalue().split(f"{path}: ", 1)[-1].strip()[:300]
    try:
        manifest = load_manifest(art)
        runtime = ModelRuntime(art, expected_model_id=manifest.model_id)
        logits = make_backend("portable", art, manifest, "sgd").predict(runtime.initial("shared"),
                                                                        runtime.embed(x))["global"]
        if kind != "none":
            diff = float(np.abs(as_kind(logits, kind) - (source or source_outputs)(path, x, fixed, out_index)).max())
            record["as_imported_max_diff"] = diff
            if diff > 1e-5:
                return {**record, "outcome": "SILENTLY WRONG"}
        check_backends_agree(art, x, y)
        record["export"] = export_round_trip(art, manifest, x, y, path.parent)
        record["outcome"] = "imported" if record["export"] == "ok" else "EXPORT FAILED"
    except BaseException:  # noqa: BLE001
        record.update(outcome="TRACEBACK after import", detail=traceback.format_exc()[-800:])
    return record
