"""One (model, backend) train-step measurement, in its own process; prints one JSON line.

    python -m tools.bench.train_step_worker --model NAME --backend portable|ort-training|numpy|torch \
        --artifacts DIR [--steps 200 --warmup 20 --batch-size 32 --threads 1 --seed 0]

The process imports only what its backend needs (the torch worker never loads onnxruntime,
the ONNX workers never load torch, none loads onnx), so its peak RSS is what a device running
that backend pays, imports included. An unavailable backend prints `skipped` with the reason
and exits 0; any other failure exits non-zero with a traceback.

Peak RSS is VmHWM from /proc/self/status, not getrusage's ru_maxrss: on Linux ru_maxrss
survives fork+exec, so a worker started by a parent that had built the ONNX graphs would
report the parent's peak (measured: 610 MB for a 9 MB child of a 600 MB parent).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import numpy as np

from fedge.edge_runtime.kernel.errors import BackendUnavailable
from fedge.edge_runtime.kernel.manifest import Manifest, load_manifest

# Plain SGD: the one optimizer every backend runs (ort-training's SGD has no momentum). Small
# enough that 200+ steps on 8 random batches stay finite: timing NaN arithmetic is no benchmark.
LR, MOMENTUM = 0.05, 0.0
DISTINCT_BATCHES = 8  # cycled; few enough that the data adds little to the RSS


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB -> MiB
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def make_stepper(backend: str, artifacts: str, manifest: Manifest, threads: int):
    """A `step(z, y) -> loss` callable, started from params_init.npz, plus version info.

    Raises BackendUnavailable (or ImportError) when the backend cannot run here."""
    if backend == "torch":
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable(f"torch is not installed in this Python ({exc})") from None
        from fedge.tools.bench.torch_reference import TorchStep

        stepper = TorchStep(artifacts, manifest, threads)
        stepper.start(lr=LR, momentum=MOMENTUM)
        return stepper.step, {"torch_version": torch.__version__}

    from fedge.edge_runtime.trainer import StepHyper

    trainer = _onnx_or_numpy_backend(backend, artifacts, manifest, threads)
    with np.load(f"{artifacts}/params_init.npz", allow_pickle=False) as data:
        params = {p.name: data[p.name] for p in manifest.trainable}
    anchor = {p.name: params[p.name] for p in manifest.by_role("shared")}
    trainer.start(params, None, anchor, None)
    hyper = StepHyper(lr=LR, momentum=MOMENTUM)
    info = {}
    if "onnxruntime" in sys.modules:
        info["onnxruntime_version"] = sys.modules["onnxruntime"].__version__
    return (lambda z, y: trainer.step(z, y, hyper)), info


def _onnx_or_numpy_backend(backend, artifacts, manifest, threads):
    from fedge.edge_runtime.trainer import make_backend

    if threads == 1 or backend == "numpy":
        return make_backend(backend, artifacts, manifest, "sgd")
    # make_backend has no thread knob; the onnxruntime backends take intra-op threads.
    # Built directly, not rebuilt after make_backend, so two sessions never add to the peak RSS.
    if backend == "portable":
        from fedge.edge_runtime.trainer.portable import PortableBackend as cls
    else:
        from fedge.edge_runtime.trainer.ort_training import OrtTrainingBackend as cls
    return cls(artifacts, manifest, "sgd", threads=threads)


def measure(args) -> dict:
    manifest = load_manifest(args.artifacts)
    entry = {
        "model": args.model,
        "backend": args.backend,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "threads": args.threads,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    rng = np.random.default_rng(args.seed)
    shape = (DISTINCT_BATCHES, args.batch_size, *manifest.embedding_shape)
    num_classes = int(manifest.spec["num_classes"])
    zs = rng.standard_normal(shape, dtype=np.float32)
    ys = rng.integers(0, num_classes, shape[:2], dtype=np.int64)
    try:
        step, info = make_stepper(args.backend, args.artifacts, manifest, args.threads)
    except (BackendUnavailable, ImportError) as exc:
        return {**entry, "ms_per_step": None, "p90_ms": None, "peak_rss_mb": None, "skipped": str(exc)}
    entry.update(info)

    for i in range(args.warmup):
        step(zs[i % DISTINCT_BATCHES], ys[i % DISTINCT_BATCHES])
    times_ns = np.empty(args.steps, np.int64)
    loss = float("nan")
    for i in range(args.steps):
        j = (args.warmup + i) % DISTINCT_BATCHES
        t0 = time.perf_counter_ns()
        loss = step(zs[j], ys[j])
        times_ns[i] = time.perf_counter_ns() - t0
    ms = times_ns / 1e6
    entry.update(
        ms_per_step=float(np.median(ms)),
        p90_ms=float(np.percentile(ms, 90)),
        peak_rss_mb=peak_rss_mb(),
        last_loss=float(loss),  # same seed and data on every backend: should agree to ~1e-4
        loaded=sorted(m for m in ("numpy", "onnx", "onnxruntime", "torch") if sys.modules.get(m) is not None),
    )
    if not np.isfinite(loss):
        entry["warning"] = "the loss went non-finite: these timings are of NaN arithmetic"
    return entry


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.train_step_worker", description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--backend", required=True, choices=("portable", "ort-training", "numpy", "torch"))
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.threads < 1:
        ap.error("need steps >= 1, warmup >= 0, batch-size >= 1, threads >= 1")
    return args


if __name__ == "__main__":
    _args = parse_args()
    if _args.backend != "torch":
        # The onnxruntime training build imports torch from its own __init__ when torch is
        # installed; a device has no torch, so neither does an ONNX worker (nor its RSS).
        sys.modules["torch"] = None
    print(json.dumps(measure(_args)), flush=True)
