"""`fedge bench heterogeneity`: FedAvg, FedProx, SCAFFOLD, FedAvgM, FedAdam and FedYogi,
with personalization on and off, over six partitions of MNIST-5k (and a --data DIR), plus a
communication sweep, the personalization modes and new devices. Writes one JSON document, a
Markdown report with issue 4's targets (met or not) and PNG plots.

    fedge bench heterogeneity --json out.json --report DIR [--quick] [--data DIR] [--workers 2]
        [--partitions L] [--compression L] [--compression-models L] [--pretrained-partitions L]

Output JSON (schema 1):
    schema, benchmark ("heterogeneity"), quick, grid (the HeteroGrid), environment, wall_seconds
    cells: list, one per (dataset, partition, algorithm, personalization):
        dataset, partition, algorithm        str
        personalization                      bool: on = adapters (LoRA + private head), off = global head only
        rounds_to_target                     int (1-based) or null: first round with global accuracy
                                             >= target_accuracy (grid.target_fraction x centralized)
        target_accuracy                      fraction
        final_global_accuracy                fraction: global model on the union of held-out splits,
                                             mean of the last grid.final_window rounds
        personalized_accuracy_mean, _min     fraction, same window: each device's personalized model on
                                             its own split (off: the global model); mean and worst device
        personalized_accuracy_p10            the 10th percentile over devices (numpy's linear interpolation)
        backbone                             "random" (the spec's random frozen layers)
        bytes_up_per_round                   float: uplink bytes per round on the wire (messages with headers,
                                             every update received, stale ones included)
        bytes_up_dense_per_round             float: the same messages with dense fp32 deltas
        wall_seconds                         float: the whole simulation, evaluation included
        declines                             {reason: count}: tasks devices declined (e.g. diverged)
        rounds, shared_params, global_accuracy_curve, personalized_accuracy_curve
    baselines: {partition: {dataset, local_only: {accuracy_mean, accuracy_min, epochs, accuracy_per_device},
                            central: {accuracy, epochs}, target_accuracy}}
    multipliers: list of {dataset, algorithm, personalization, partition, rounds_to_target,
                          iid_rounds_to_target, multiplier (null when either is null)}
    compression: list of {model ("adapters" | "full"), shared_params, rounds, setting, quant_bits,
                          topk_fraction, error_feedback, final_accuracy, bytes_up_per_round, ratio_vs_dense,
                          accuracy_delta_vs_dense, curves};
                          ratios and deltas are against the same model's dense fp32 run
    personalization_modes: list of {mode, shared_params, personal_params, bytes_up_per_round,
                          final_global_accuracy, personalized_accuracy_mean, _min, new_devices,
                          devices (the ids that trained)}
    upload_comparison: adapters vs full (tools/bench/hetero_metrics.upload_comparison), or null
    targets: list of {id, name, met (true, false, or null = not measured), detail, ...}: issue 4's four,
             and 5: Dirichlet 0.1's 10th percentile of personalized accuracy >= 85% (issue 11)
    pretrained: the pretrained-backbone rows (HeteroGrid.pretrained_partitions; issue 11), or {skipped: why}:
             proxy_fraction, proxy_examples, accuracy (the pretrained model as is, before round 1), and
             cells (backbone "pretrained"), baselines, multipliers, compression in the shapes above,
             targets 1 and 5 on these rows
    data_standardize: with --data DIR, {standardize, standardize_why, standardize_with, divided_by_255} as its jobs ran
             it (run.json's config fields; grid.data_standardize is what was asked, null = auto); else null
    errors: jobs that failed, with the error
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, replace
from pathlib import Path

from fedge.coordinator.config import load_coordinator_config
from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.tools.cli_args import MAX_PARALLEL, MAX_SEED, int_in, out_file_arg, path_arg, standardize_flags
from fedge.tools.standardizing import Standardizing

from . import hetero_metrics as m
from .hetero_grid import COMPRESSION, PRETRAINED, QUICK, HeteroGrid, Job, build_jobs, run_job


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench heterogeneity", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", dest="json_path", type=out_file_arg, required=True, help="write the results here")
    p.add_argument("--report", dest="report_dir", type=path_arg,
                   help="folder for report.md and the PNGs (default: beside --json)")
    p.add_argument("--quick", action="store_true", help="a reduced grid: 20 devices, 15 rounds, 42 jobs "
                   "(84-127 s measured on 2 shared cores)")
    p.add_argument("--data", dest="data_dir", metavar="DIR", type=path_arg,
                   help="also run on one .npz per client in DIR")
    standardize_flags(p, "--data: every device standardizes its features with the fleet's statistics "
                      "(default: auto, as `fedge simulate --data` decides: only when they are far from "
                      "standardized, and 8-bit intensities saved as float are read as x / 255 instead)",
                      "--data: train on the features as saved")
    p.add_argument("--workers", type=int_in(1, MAX_PARALLEL), default=None, help="processes (default 2)")
    p.add_argument("--rounds", type=int, default=None, help="override the grid's rounds")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=None)
    p.add_argument("--config", metavar="FILE.toml", type=path_arg,
                   help="every job's coordinator settings from this TOML (its "
                   "[coordinator] table, as `fedge coordinator serve` reads it); default: the grid's preset")
    p.add_argument("--partitions", help="comma list: the random-backbone partitions (default: the grid's)")
    p.add_argument("--compression", help="comma list: the compression settings (default: the grid's)")
    p.add_argument("--compression-models", help="comma list of adapters,full (default: the grid's)")
    p.add_argument("--pretrained-partitions", help="comma list; empty: no pretrained rows (default: the grid's)")
    args = p.parse_args(argv)
    grid = QUICK if args.quick else HeteroGrid()
    if args.standardize is not None and not args.data_dir:
        p.error("--standardize and --no-standardize apply to --data DIR (the grid's shipped datasets are scaled)")
    lists = {"partitions": args.partitions, "compression": args.compression,
             "compression_models": args.compression_models, "pretrained_partitions": args.pretrained_partitions}
    try:
        grid = replace(grid, **{k: tuple(x for x in v.split(",") if x) for k, v in lists.items() if v is not None})
    except ValueError as exc:
        p.error(str(exc))
    if args.config:
        # every cell sets its own strategy over the file's: a key the file's strategy does not read
        # may be one a cell's does (server_beta1 for the fedadam cells), so none is refused here
        grid = replace(grid, coordinator=load_coordinator_config(args.config, check_unread=False))
    overrides = {k: v for k, v in (("workers", args.workers), ("rounds", args.rounds), ("seed", args.seed),
                                   ("data_standardize", args.standardize)) if v is not None}
    try:
        grid = replace(grid, **overrides)
    except ValueError as exc:
        p.error(str(exc))
    report_dir = args.report_dir or str(Path(args.json_path).parent)
    doc = run(grid, args.json_path, report_dir, data_dir=args.data_dir, quick=args.quick)
    met = {t["id"]: t["met"] for t in doc["targets"]}
    print(f"wrote {args.json_path} and {report_dir}/report.md in {doc['wall_seconds']:.0f} s; targets met: {met}")
    return 0


def run(grid: HeteroGrid, json_path, report_dir, data_dir: str | None = None, quick: bool = False,
        log=lambda line: print(line, file=sys.stderr, flush=True)) -> dict:
    """Run every job of the grid, write the JSON and the report, return the document."""
    from fedge.tools.datasets import load_npz_dir

    from .hetero_report import claim_report_dir, write_report

    decided = None  # the --data DIR's standardization as the jobs run it (the grid holds what was asked)
    if data_dir:  # a --data DIR with no usable .npz was found by its jobs, after the grid's pretraining
        decided = load_npz_dir(data_dir, standardize=grid.data_standardize).standardizing  # the jobs' load lines
    claim_report_dir(report_dir)  # someone else's report.md or PNG there: refused before the grid runs
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedge-hetero-pretrained-") as tmp:
        pretrained = _pretrain(grid, Path(tmp), log)
        jobs = build_jobs(grid, data_dir, pretrained.get("model"))
        results = _run_all(jobs, grid.workers, log)
    doc = assemble(grid, results, time.perf_counter() - started, quick, pretrained, decided)
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    write_report(doc, report_dir)
    return doc


def _pretrain(grid: HeteroGrid, folder: Path, log) -> dict:
    """The pretrained backbone of the pretrained rows (`fedge pretrain`, in `folder`): {model,
    proxy_examples, accuracy}, or {skipped: why}."""
    if not grid.pretrained_partitions:
        return {"skipped": "no pretrained partitions in the grid"}
    if not grid.datasets or grid.datasets[0] != "mnist5k":
        return {"skipped": "the pretrained spec is MNIST's MLP: pretrained rows run on mnist5k only"}
    from fedge.tools.pretrain import PretrainConfig, pretrain

    try:  # a failed pretrain costs the pretrained rows, not the grid
        result = pretrain(PretrainConfig(out=str(folder), dataset="mnist5k", proxy_fraction=grid.proxy_fraction,
                                         devices=grid.devices, seed=grid.seed))
    except Exception as exc:  # noqa: BLE001 - reported in the JSON
        return {"skipped": f"fedge pretrain failed: {type(exc).__name__}: {exc}"}
    log(f"pretrained on {result.proxy_examples} proxy examples: accuracy {result.accuracy:.4f} before round 1")
    return {"model": str(result.spec_file), "proxy_fraction": grid.proxy_fraction,
            "proxy_examples": result.proxy_examples, "accuracy": result.accuracy}


def _run_all(jobs: list[Job], workers: int, log) -> list[dict]:
    results = []
    if workers == 1:
        for i, job in enumerate(jobs):
            results.append(_safe_run(job))
            log(_progress(i + 1, len(jobs), results[-1]))
        return results
    # spawn: workers start clean (no onnxruntime state copied from a parent mid-session).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_safe_run, job) for job in jobs]
        for i, future in enumerate(as_completed(futures)):
            results.append(future.result())
            log(_progress(i + 1, len(jobs), results[-1]))
    return results


def _safe_run(job: Job) -> dict:
    """A failed job becomes a row with its error, so one bad cell does not lose the grid."""
    try:
        return run_job(job)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON's errors
        return {"kind": job.kind, **job.labels, "error": f"{type(exc).__name__}: {exc}"}


def _progress(i: int, n: int, row: dict) -> str:
    keys = ("dataset", "partition", "algorithm", "compression_model", "setting", "mode")
    labels = " ".join(str(row[k]) for k in keys if k in row)
    if "personalization" in row:
        labels += f" personalization {'on' if row['personalization'] else 'off'}"
    if "error_feedback" in row:
        labels += f" EF {'on' if row['error_feedback'] else 'off'}"
    extra = f"error {row['error']}" if "error" in row else f"{row.get('wall_seconds', 0):.1f} s"
    return f"[{i}/{n}] {row['kind']} {labels}: {extra}"


def assemble(grid: HeteroGrid, results: list[dict], wall_seconds: float, quick: bool = False,
             pretrained: dict | None = None, standardizing: Standardizing | None = None) -> dict:
    """The JSON document from the jobs' rows (pure). The pretrained rows (backbone "pretrained")
    go to `pretrained`, beside the random-backbone document, in the same shapes. `standardizing`:
    a --data DIR's decision, recorded as `data_standardize` {standardize, standardize_why, standardize_with,
    divided_by_255} (what ran, as run.json's config has it; the grid's data_standardize is what was asked,
    null = auto)."""
    ok = [r for r in results if "error" not in r]
    random = [r for r in ok if r.get("backbone", "random") != PRETRAINED]
    doc = _assemble_backbone(grid, random, quick)
    pre_rows = [r for r in ok if r.get("backbone") == PRETRAINED]
    pre = dict(pretrained or {})
    pre.pop("model", None)  # a temporary path
    if pre_rows:
        mine = _assemble_backbone(grid, pre_rows, quick)
        primary = grid.datasets[0]
        pre.update(cells=mine["cells"], baselines=mine["baselines"], multipliers=mine["multipliers"],
                   compression=mine["compression"],
                   targets=[m.target_shards(mine["multipliers"], primary, grid.rounds),
                            m.target_tail(mine["cells"], primary, "dirichlet-0.1")])
        for c in pre["cells"]:
            c["backbone"] = PRETRAINED
    for c in doc["cells"]:
        c["backbone"] = "random"
    doc["targets"].append(m.target_tail(doc["cells"], grid.datasets[0] if grid.datasets else None,
                                        "dirichlet-0.1"))
    return {"schema": 1, "benchmark": "heterogeneity", "quick": quick, "grid": asdict(grid),
            "environment": _environment(), "wall_seconds": round(wall_seconds, 1), **doc, "pretrained": pre,
            "data_standardize": standardizing and {"standardize": standardizing.on,
                                                   "standardize_why": standardizing.why,
                                                   "standardize_with": standardizing.applied_with,
                                                   "divided_by_255": standardizing.divided_by_255},
            "errors": [r for r in results if "error" in r]}


def _assemble_backbone(grid: HeteroGrid, ok: list[dict], quick: bool) -> dict:
    """cells, baselines, multipliers, compression, modes and targets of one backbone's rows."""
    window = grid.final_window
    baselines = {}
    order = list(grid.partitions)
    for r in sorted((r for r in ok if r["kind"] == "baselines"),
                    key=lambda r: order.index(r["partition"]) if r["partition"] in order else len(order)):
        baselines[r["partition"]] = {"dataset": r["dataset"], "local_only": r["local_only"], "central": r["central"],
                                     "target_accuracy": grid.target_fraction * r["central"]["accuracy"]}
    cells = []
    for r in (r for r in ok if r["kind"] == "cell"):
        base = baselines.get(r["partition"])
        target = base["target_accuracy"] if base else None
        cells.append({
            "dataset": r["dataset"], "partition": r["partition"], "algorithm": r["algorithm"],
            "personalization": r["personalization"],
            "rounds_to_target": m.rounds_to_target(r["global_accuracy_curve"], target) if target is not None else None,
            "target_accuracy": target,
            **_finals(r, window),
            "bytes_up_per_round": r["bytes_up_per_round"], "bytes_up_dense_per_round": r["bytes_up_dense_per_round"],
            "wall_seconds": r["wall_seconds"], "rounds": r["rounds"], "shared_params": r["model"]["shared_params"],
            "declines": r["declines"],
            "global_accuracy_curve": r["global_accuracy_curve"],
            "personalized_accuracy_curve": r["personalized_accuracy_curve"],
        })
    cells.sort(key=lambda c: (c["dataset"],
                              list(grid.partitions).index(c["partition"]) if c["partition"] in grid.partitions
                              else 99, c["algorithm"], c["personalization"]))
    compression = _compression([r for r in ok if r["kind"] == "compression"], window)
    modes = {r["mode"]: r for r in ok if r["kind"] == "mode"}
    mode_rows = [{"mode": k, "shared_params": r["model"]["shared_params"],
                  "personal_params": r["model"]["personal_params"],
                  "bytes_up_per_round": r["bytes_up_per_round"], **_finals(r, window), "new_devices": r["new_devices"],
                  "devices": r.get("devices"), "wall_seconds": r["wall_seconds"]}
                 for k, r in sorted(modes.items(), key=lambda kv: grid.modes.index(kv[0]))]
    comparison = m.upload_comparison(modes["adapters"], modes["full"], window) if {"adapters",
                                                                                   "full"} <= set(modes) else None
    mults = m.multipliers(cells)
    primary = grid.datasets[0] if grid.datasets else None
    targets = [m.target_shards(mults, primary, grid.rounds),
               m.target_personalized(cells, mode_rows, baselines, primary, modes_partition=grid.modes_partition),
               m.target_compression(compression), m.target_adapters(comparison)]
    return {"cells": cells, "baselines": baselines, "multipliers": mults, "compression": compression,
            "personalization_modes": mode_rows, "upload_comparison": comparison, "targets": targets}


def _finals(r: dict, window: int) -> dict:
    p10 = [v for v in r.get("personalized_accuracy_p10_curve", ()) if v is not None]
    return {"final_global_accuracy": m.final_accuracy(r["global_accuracy_curve"], window),
            "personalized_accuracy_mean": m.final_accuracy(r["personalized_accuracy_curve"], window),
            "personalized_accuracy_min": m.final_accuracy(r["personalized_accuracy_min_curve"], window),
            "personalized_accuracy_p10": m.final_accuracy(p10, window) if p10 else None}


def _compression(rows: list[dict], window: int) -> list[dict]:
    """One row per (model, setting, error feedback); ratios and deltas against the same model's dense fp32."""
    out = []
    models = list(dict.fromkeys(r.get("compression_model", "adapters") for r in rows))
    for model in models:
        mine = [r for r in rows if r.get("compression_model", "adapters") == model]
        dense = next((r for r in mine if r["setting"] == "dense-fp32" and r["error_feedback"]), None)
        dense = dense or next((r for r in mine if r["setting"] == "dense-fp32"), None)
        dense_acc = m.final_accuracy(dense["global_accuracy_curve"], window) if dense else None
        for r in sorted(mine, key=lambda r: (list(COMPRESSION).index(r["setting"]), not r["error_feedback"])):
            acc = m.final_accuracy(r["global_accuracy_curve"], window)
            bits, topk = COMPRESSION[r["setting"]]
            out.append({"model": model, "shared_params": r["model"]["shared_params"], "rounds": r["rounds"],
                        "setting": r["setting"], "quant_bits": bits, "topk_fraction": topk,
                        "error_feedback": r["error_feedback"], "final_accuracy": acc,
                        "bytes_up_per_round": r["bytes_up_per_round"],
                        "ratio_vs_dense": dense["bytes_up_per_round"] / r["bytes_up_per_round"] if dense else None,
                        "accuracy_delta_vs_dense": acc - dense_acc if dense else None,
                        "global_accuracy_curve": r["global_accuracy_curve"], "bytes_up_curve": r["bytes_up_curve"],
                        "wall_seconds": r["wall_seconds"]})
    return out


def _environment() -> dict:
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import numpy
        import onnxruntime

        env.update(numpy=numpy.__version__, onnxruntime=onnxruntime.__version__)
    except ImportError:
        pass
    return env


if __name__ == "__main__":
    sys.exit(main())
