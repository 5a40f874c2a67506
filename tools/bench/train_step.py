"""`fedge bench train-step`: time one device train step per (model, backend), against torch.

A step is what a device runs per batch: forward, backward and SGD update of the trainable
part (LoRA adapters + heads) on cached embeddings. The frozen conv backbone of a CNN is not
part of it (a device runs it once per dataset), and the torch reference skips it too.

Artifacts are built once per model into a temporary directory; each (model, backend) then
runs in its own process (tools/bench/train_step_worker.py) so that its peak RSS counts only
that backend's imports and buffers. Threads default to 1 for every backend: onnxruntime
sessions get intra_op_num_threads=N, torch set_num_threads(N), and numpy's BLAS
OMP/OPENBLAS/MKL_NUM_THREADS=N.

Output: a JSON list, one object per (model, backend):
    model, backend, ms_per_step (median, ms; null when skipped), p90_ms, peak_rss_mb (MiB),
    batch_size, steps, threads, python, machine, onnxruntime_version / torch_version where
    loaded, last_loss, loaded (heavy modules in the process), skipped or error (with the
    reason), warning (the loss went non-finite), and vs_torch_time / vs_torch_rss
    (this / torch) when torch was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.tools.cli_args import MAX_PARALLEL, int_in, names_arg, out_file_arg

MODELS = ("mlp-784-lora", "cnn-28-lora")
BACKENDS = ("portable", "ort-training", "numpy", "torch")
REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_TIMEOUT_S = 900


def run(
    json_path,
    models=MODELS,
    backends=BACKENDS,
    batch_size: int = 32,
    steps: int = 200,
    warmup: int = 20,
    threads: int = 1,
) -> list[dict]:
    """Measure every (model, backend), write the JSON list to json_path and return it."""
    unknown = set(backends) - set(BACKENDS)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; choose from {BACKENDS}")
    results: list[dict] = []
    for model in models:
        with tempfile.TemporaryDirectory(prefix=f"fedge-bench-{_dir_label(model)}-") as artifacts:
            ort_missing = _build(model, artifacts, want_ort="ort-training" in backends)
            for backend in backends:
                base = {"model": model, "backend": backend, "batch_size": batch_size, "steps": steps,
                        "threads": threads}
                if backend == "ort-training" and ort_missing:
                    results.append({**base, "ms_per_step": None, "p90_ms": None, "peak_rss_mb": None, **ort_missing})
                    continue
                results.append(_run_worker(base, artifacts, warmup))
    add_torch_ratios(results)
    atomic_write_bytes(Path(json_path), (json.dumps(results, indent=2) + "\n").encode())
    print(format_table(results))
    return results


def _dir_label(model: str) -> str:
    """A temporary folder's name part for a model: a TOML path ("./specs/my.toml") contributes
    its stem, since mkdtemp would read the "/" in the prefix as folders that do not exist."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", Path(model).stem) or "model"


def _build(model: str, outdir: str, want_ort: bool) -> dict | None:
    """Build the artifacts. When ORT training artifacts were wanted but not built, returns
    {"skipped": why} (not installed) or {"error": why} (generation failed); else None.
    The portable graphs are always built, so a broken ORT generator costs one entry."""
    from fedge.edge_runtime.trainer import available_backends
    from fedge.models.build import build_artifacts
    from fedge.models.spec import load_spec

    spec = load_spec(model)
    if not want_ort:
        build_artifacts(spec, outdir, ort_training=False)
        return None
    if "ort-training" not in available_backends():
        build_artifacts(spec, outdir, ort_training=False)
        return {"skipped": "onnxruntime-training is not installed in this Python (stock onnxruntime cannot run it)"}
    try:
        build_artifacts(spec, outdir, ort_training=None)
    except ImportError as exc:  # the training build is here but fedge's artifact generator is not
        build_artifacts(spec, outdir, ort_training=False)
        return {"skipped": f"ORT training artifacts cannot be generated here: {exc}"}
    except Exception as exc:  # noqa: BLE001 - reported in the entry, the other backends still run
        build_artifacts(spec, outdir, ort_training=False)
        return {"error": f"generating ORT training artifacts failed: {type(exc).__name__}: {exc}"}
    return None


def _run_worker(base: dict, artifacts: str, warmup: int) -> dict:
    cmd = [
        sys.executable, "-m", "fedge.tools.bench.train_step_worker",
        "--model", base["model"], "--backend", base["backend"], "--artifacts", artifacts,
        "--steps", str(base["steps"]), "--warmup", str(warmup),
        "--batch-size", str(base["batch_size"]), "--threads", str(base["threads"]),
    ]  # fmt: skip
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(base["threads"])
    failed = {**base, "ms_per_step": None, "p90_ms": None, "peak_rss_mb": None}
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"worker timed out after {WORKER_TIMEOUT_S} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {**failed, "error": f"worker exited {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def add_torch_ratios(results: list[dict]) -> None:
    """Add vs_torch_time / vs_torch_rss (this / torch) to measured non-torch entries, in place."""
    torch_by_model = {r["model"]: r for r in results if r["backend"] == "torch" and r.get("ms_per_step")}
    for r in results:
        ref = torch_by_model.get(r["model"])
        if ref is None or r["backend"] == "torch" or not r.get("ms_per_step"):
            continue
        r["vs_torch_time"] = round(r["ms_per_step"] / ref["ms_per_step"], 3)
        r["vs_torch_rss"] = round(r["peak_rss_mb"] / ref["peak_rss_mb"], 3)


def format_table(results: list[dict]) -> str:
    header = (f"{'model':<14} {'backend':<13} {'ms/step':>8} {'p90 ms':>8} {'RSS MiB':>8} {'time/torch':>10} "
              f"{'RSS/torch':>9}")
    rows = [header, "-" * len(header)]
    for r in results:
        if r.get("ms_per_step") is None:
            why = r.get("skipped") or r.get("error")
            rows.append(f"{r['model']:<14} {r['backend']:<13} {'skipped' if 'skipped' in r else 'error'}: {why}")
            continue
        ratio_t = f"{r['vs_torch_time']:.2f}x" if "vs_torch_time" in r else "-"
        ratio_m = f"{r['vs_torch_rss']:.2f}x" if "vs_torch_rss" in r else "-"
        rows.append(
            f"{r['model']:<14} {r['backend']:<13} {r['ms_per_step']:>8.3f} {r['p90_ms']:>8.3f} "
            f"{r['peak_rss_mb']:>8.1f} {ratio_t:>10} {ratio_m:>9}" + ("  (loss diverged)" if "warning" in r else "")
        )
    return "\n".join(rows)


def _names(values: list[str]) -> tuple[str, ...]:
    """Accept both `--models a b` and `--models a,b`."""
    return tuple(name for v in values for name in v.split(",") if name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fedge bench train-step",
                                 description="Time one train step per model and backend, vs torch.")
    ap.add_argument("--json", required=True, type=out_file_arg, help="where to write the results (a JSON list)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), type=names_arg,
                    help=f"spec names or TOML paths (default: {' '.join(MODELS)})")
    ap.add_argument("--backends", nargs="+", default=list(BACKENDS), type=names_arg,
                    help=f"subset of {' '.join(BACKENDS)}")
    ap.add_argument("--steps", type=int_in(1), default=200, help="timed steps per backend")
    ap.add_argument("--warmup", type=int_in(0), default=20, help="untimed steps first")
    ap.add_argument("--batch-size", type=int_in(1), default=32)
    ap.add_argument("--threads", type=int_in(1, MAX_PARALLEL), default=1, help="compute threads for every backend")
    args = ap.parse_args(argv)
    backends = _names(args.backends)
    if set(backends) - set(BACKENDS):
        ap.error(f"unknown backends {sorted(set(backends) - set(BACKENDS))}; choose from {BACKENDS}")
    run(args.json, _names(args.models), backends, args.batch_size, args.steps, args.warmup, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
