"""`fedge bench screening`: what guard-set screening (coordinator/robust/screening.py) costs the
coordinator per round, against the round's size.

    fedge bench screening --json out.json [--inputs 10,30,100] [--guard-fraction 0.1] [--repeats 3]

For each k it feeds k updates of the MNIST-5k model (the simulator's default, with the guard
split of `fedge simulate --guard-fraction`) to the aggregator the coordinator builds with a
guard set, and times mean(): the clip, the guard-set evaluations and the elimination. A share
`--flipped` of each round's updates are sign-flipped copies of the honest direction, so the
rule has something to drop. The deltas are synthetic (a shared direction plus noise); the
time depends on k, the model and the guard set, not on what the updates learned.

Output JSON (schema 1): schema, benchmark ("screening"), guard_examples, shared_params,
flipped, repeats, python, machine, cpus, and rows: one per k with
    inputs                 k
    seconds                median wall time of one round's mean() over the repeats (the same
                           round each time)
    seconds_min            the fastest
    evaluations            guard-set evaluations in that round (at most k(k+1)/2 + k)
    evaluation_seconds     seconds / evaluations
    dropped                updates the rule left out
    clip_only_seconds      the same round through norm_bound without a guard set, for scale
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.files import atomic_write_bytes
from fedge.tools.cli_args import MAX_COUNT, int_list_arg, out_file_arg


def _round(k: int, flipped: float, shapes: dict, rng: np.random.Generator) -> list[dict]:
    direction = {n: rng.normal(scale=0.01, size=s).astype(np.float32) for n, s in shapes.items()}
    bad = round(flipped * k)
    rows = []
    for i in range(k):
        sign = -1.0 if i < bad else 1.0
        rows.append({n: (sign * d + rng.normal(scale=0.01, size=d.shape)).astype(np.float32)
                     for n, d in direction.items()})
    return rows


def _time_round(updates, guard_loss) -> tuple[float, int, int]:
    from fedge.coordinator.robust.aggregators import RobustConfig, RobustState, make_aggregator

    calls = [0]

    def counted(delta):
        calls[0] += 1
        return guard_loss(delta)

    agg = make_aggregator("norm_bound", RobustConfig(), RobustState(), np.random.default_rng(0),
                          counted if guard_loss is not None else None)
    for u in updates:
        agg.add(u, 10.0)
    started = time.perf_counter()
    agg.mean()
    return time.perf_counter() - started, calls[0], getattr(agg, "screened_out", 0)


def run(inputs: tuple[int, ...], guard_fraction: float, flipped: float, repeats: int, seed: int = 0) -> dict:
    from fedge.coordinator.holdout import HoldoutCheck
    from fedge.tools.simulate.config import sim_config
    from fedge.tools.simulate.fleet import prepare

    setup = prepare(sim_config(dataset="mnist5k", devices=2, seed=seed, guard_fraction=guard_fraction))
    try:
        check = HoldoutCheck(setup.art_dir, setup.manifest, setup.ccfg.guard_set, 1.5)
        current = setup.model.initial("shared")
        shapes = {n: v.shape for n, v in current.items()}
        guard_loss = check.delta_loss(current)
        rng = np.random.default_rng(seed)
        rows = []
        for k in inputs:
            updates = _round(k, flipped, shapes, rng)  # the same round each repeat: same drops, same count
            timed, plain = [], []
            for _ in range(repeats):
                seconds, evaluations, dropped = _time_round(updates, guard_loss)
                timed.append(seconds)
                plain.append(_time_round(updates, None)[0])
            median = statistics.median(timed)
            rows.append({"inputs": k, "seconds": median, "seconds_min": min(timed), "evaluations": evaluations,
                         "evaluation_seconds": median / max(evaluations, 1), "dropped": dropped,
                         "clip_only_seconds": statistics.median(plain)})
        return {"schema": 1, "benchmark": "screening", "guard_examples": int(len(check.y)),
                "shared_params": int(sum(int(np.prod(s)) for s in shapes.values())), "flipped": flipped,
                "repeats": repeats, "python": platform.python_version(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "rows": rows}
    finally:
        setup.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fedge bench screening", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", dest="json_path", type=out_file_arg, required=True, help="write the results here")
    p.add_argument("--inputs", default="10,30,100", type=int_list_arg(1),
                   help="comma list of updates per round (default 10,30,100)")
    p.add_argument("--guard-fraction", type=float, default=0.1, help="share of MNIST-5k in the guard set (0.1 = 500)")
    p.add_argument("--flipped", type=float, default=0.2, help="share of each round's updates sign-flipped")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    inputs = tuple(int(k) for k in args.inputs.split(","))
    if not inputs or min(inputs) < 1 or args.repeats < 1 or not 0 < args.guard_fraction <= 0.5 \
            or not 0 <= args.flipped < 0.5:
        p.error("--inputs >= 1 each, --repeats >= 1, --guard-fraction in (0, 0.5], --flipped in [0, 0.5)")
    if max(inputs) > MAX_COUNT or args.repeats > MAX_COUNT:  # --repeats 10**30 ran for ever
        p.error(f"--inputs and --repeats: at most {MAX_COUNT:,}")
    doc = run(inputs, args.guard_fraction, args.flipped, args.repeats)
    path = Path(args.json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    for row in doc["rows"]:
        print(f"k={row['inputs']}: {row['seconds'] * 1e3:.1f} ms a round, {row['evaluations']} evaluations "
              f"({row['evaluation_seconds'] * 1e3:.2f} ms each), {row['dropped']} dropped; "
              f"clip only {row['clip_only_seconds'] * 1e3:.1f} ms", file=sys.stderr)
    print(f"wrote {path}")
    return 0
