"""`fedge bench scale`: the simulator's peak memory and wall time against the fleet's size.

    fedge bench scale --json out.json [--sizes 1000,3000,10000] [--clients-per-round 100]
                      [--rounds 5] [--alpha 0.5] [--beta 0.5] [--seed 0]

Each size is one `fedge simulate --dataset synthetic` run (real device runtimes, real
coordinator, real onnxruntime, in memory) in a fresh Python process, so one size's heap never
inflates the next one's figure. The process reports its own peak resident set (VmHWM from
/proc/self/status, the kernel's high-water mark) as it exits. Not the parent's view through
wait4's ru_maxrss: Linux carries a forked child's high-water mark across exec, so that counts
the parent's own size (measured: 541 MB for a run whose VmHWM was 402 MB, under pytest).

Output JSON (schema 1): benchmark "scale", dataset, clients_per_round, rounds, seed,
target_peak_rss_bytes (2e9: issue 14's 2 GB for 10,000 devices), cpus, wall_seconds,
    sizes: list, one per fleet size:
        devices               the fleet
        peak_rss_bytes        VmHWM of the simulating process (bytes)
        wall_seconds          the process from start to exit (interpreter and imports included)
        simulation_seconds    run_simulation alone (data generation, every round, evaluation)
        cpu_seconds           user + system CPU time of the process: on a shared machine the wall
                              times grow with other load, this does not
        load_average          the machine's 1-minute load average as the size started
        rounds_committed, global_accuracy, personalized_accuracy_mean   what the run reached
        within_target         peak_rss_bytes <= target_peak_rss_bytes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.tools.cli_args import MAX_COUNT, MAX_SEED, int_in, out_file_arg

TARGET_PEAK_RSS_BYTES = 2_000_000_000  # issue 14: 10,000 devices in at most 2 GB


@dataclass(frozen=True)
class ScaleGrid:
    sizes: tuple[int, ...] = (1000, 3000, 10000)
    clients_per_round: int = 100
    rounds: int = 5
    alpha: float = 0.5  # synthetic(0.5, 0.5), as `fedge simulate --dataset synthetic` by default
    beta: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1 or self.clients_per_round < 1 or self.rounds < 1:
            raise ValueError("need sizes >= 1, clients_per_round >= 1 and rounds >= 1")
        if max(self.sizes) > MAX_COUNT:  # 10**30: a traceback from numpy
            raise ValueError(f"--sizes {max(self.sizes)}: at most {MAX_COUNT:,} devices")
        # each size runs in a child process: SimConfig's refusal there was a traceback
        if not (0 <= self.alpha < math.inf and 0 <= self.beta < math.inf) or self.seed < 0:
            raise ValueError(f"--alpha {self.alpha} --beta {self.beta} --seed {self.seed}: need α and β >= 0 and "
                             f"finite, seed >= 0")


def peak_rss_bytes() -> int:
    """This process's peak resident set so far: VmHWM in /proc/self/status (Linux), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # the kernel reports kB
    raise RuntimeError("/proc/self/status has no VmHWM line (not Linux?)")


def _worker(grid: ScaleGrid, devices: int) -> dict:
    """One run, in this (fresh) process; what it reached and its own peak memory."""
    from fedge.tools.simulate.config import sim_config
    from fedge.tools.simulate.fleet import run_simulation

    cfg = sim_config(dataset="synthetic", devices=devices, rounds=grid.rounds, alpha=grid.alpha, beta=grid.beta,
                     seed=grid.seed, clients_per_round=grid.clients_per_round, out_dir="")
    started = time.perf_counter()
    result = run_simulation(cfg)
    last = result.rounds[-1] if result.rounds else {}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"simulation_seconds": time.perf_counter() - started, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "rounds_committed": sum(bool(r["committed"]) for r in result.rounds),
            "global_accuracy": last.get("global_accuracy"),
            "personalized_accuracy_mean": last.get("personalized_accuracy_mean"),
            "peak_rss_bytes": peak_rss_bytes()}


def measure(grid: ScaleGrid, devices: int) -> dict:
    """Run one size in a fresh subprocess; its report plus the parent's view of it."""
    cmd = [sys.executable, "-m", "fedge.tools.bench.scale", "--worker", str(devices),
           "--grid", json.dumps(asdict(grid))]
    load, started = os.getloadavg()[0], time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{devices} devices: the run exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"devices": devices, **row, "wall_seconds": wall, "load_average": load,
            "within_target": row["peak_rss_bytes"] <= TARGET_PEAK_RSS_BYTES}


def run(grid: ScaleGrid, json_path, progress=print) -> dict:
    started = time.perf_counter()
    doc = {"schema": 1, "benchmark": "scale", "dataset": f"synthetic({grid.alpha:g},{grid.beta:g})",
           "clients_per_round": grid.clients_per_round, "rounds": grid.rounds, "seed": grid.seed,
           "target_peak_rss_bytes": TARGET_PEAK_RSS_BYTES, "cpus": os.cpu_count(), "sizes": []}
    for devices in grid.sizes:
        row = measure(grid, devices)
        doc["sizes"].append(row)
        progress(f"{devices} devices: peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB, "
                 f"{row['wall_seconds']:.0f} s")
    doc["wall_seconds"] = time.perf_counter() - started
    atomic_write_bytes(Path(json_path), json.dumps(doc, indent=2).encode())
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", dest="json_path", type=out_file_arg, help="write the results here")
    p.add_argument("--sizes", default=None, help="comma list of fleet sizes (default 1000,3000,10000)")
    p.add_argument("--clients-per-round", type=int_in(1), default=None, help="devices per round (default 100)")
    p.add_argument("--rounds", type=int_in(1), default=None, help="rounds per run (default 5)")
    p.add_argument("--alpha", type=float, default=None, help="synthetic's α (default 0.5)")
    p.add_argument("--beta", type=float, default=None, help="synthetic's β (default 0.5)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=None)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # one size, in this process
    p.add_argument("--grid", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        grid = ScaleGrid(**{k: tuple(v) if k == "sizes" else v for k, v in json.loads(args.grid).items()})
        print(json.dumps(_worker(grid, args.worker)))
        return 0
    if not args.json_path:
        p.error("--json PATH is required")
    overrides = {k: v for k, v in (("clients_per_round", args.clients_per_round), ("rounds", args.rounds),
                                   ("alpha", args.alpha), ("beta", args.beta), ("seed", args.seed)) if v is not None}
    try:
        if args.sizes:
            overrides["sizes"] = tuple(int(s) for s in args.sizes.split(","))
        grid = replace(ScaleGrid(), **overrides)
    except ValueError as exc:  # a bad number or a grid the benchmark refuses: a usage error
        p.error(str(exc))
    run(grid, args.json_path, progress=lambda line: print(line, file=sys.stderr))
    print(f"wrote {args.json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
