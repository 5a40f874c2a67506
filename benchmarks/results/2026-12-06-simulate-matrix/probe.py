"""Run the real `fedge simulate` CLI over a pairwise covering design of its options; classify each outcome.

    .venv-test/bin/python benchmarks/results/2026-12-06-simulate-matrix/probe.py OUT.json [--jobs 2] [--limit N]

Factors (FACTORS below): every --dataset, --partition, seed 0..5, devices {2, 7, 50, near the data
set's limit}, --clients-per-round {1, all}, every --strategy, --personalization, a compression and
a privacy family, every --aggregator and every --attack (with --attackers 0.2). A greedy cover
(`cover`) puts every pair of values of two factors in at least one run; --transport mqtt runs a
handful of extra rows. Each run: --rounds 2, --quiet, at most 60 s. Outcomes:
    ok            exit 0, and every number run.json's rows promise is a finite number
    bad_numbers   exit 0 with NaN/None where a number belongs
    named_error   exit 1 or 2, the last stderr line `fedge: error: ...`, no traceback (judged by hand)
    traceback     a traceback or any other exit
    hang          still running after 60 s
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FEDGE = str(Path(__file__).resolve().parents[3] / ".venv-test" / "bin" / "fedge")
LIMIT_DEVICES = {"mnist5k": 2000, "digits": 800, "synthetic": 1000}  # limits: n // 2 = 2500, 898
ATTACKS = ("label_flip", "backdoor", "sign_flip", "scale", "gaussian", "alie", "ipm", "min_max", "min_sum",
           "huge_weight", "nan", "poison")
FACTORS = {
    "dataset": ("mnist5k", "digits", "synthetic"),
    "partition": ("iid", "dirichlet", "shards", "quantity", "feature"),
    "seed": tuple(range(6)),
    "devices": (2, 7, 50, "limit"),
    "clients_per_round": (1, "all"),
    "strategy": ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedadam", "fedyogi"),
    "personalization": ("adapters", "head", "finetune", "full", "none"),
    "compression": ("none", "q8", "q4", "topk", "q8-topk-noef"),
    "privacy": ("none", "clip", "norm_bound", "dp", "secagg"),
    "aggregator": ("mean", "norm_bound", "median", "trimmed_mean", "krum", "centered_clipping"),
    "attack": ("none", *ATTACKS),
}
COMPRESSION = {"none": [], "q8": ["--quant-bits", "8"], "q4": ["--quant-bits", "4"], "topk": ["--topk", "0.1"],
               "q8-topk-noef": ["--quant-bits", "8", "--topk", "0.05", "--no-error-feedback"]}
# DP and SecAgg refuse the coordinator's default norm_bound aggregator and example weighting by name;
# the files set mean and equal, so --aggregator (a factor) decides
MEAN = "aggregator = 'mean'\nweighting = 'equal'\n"
CONFIGS = {"dp": MEAN + "[privacy]\nenabled = true\nnoise_multiplier = 1.0\nclip_norm = 0.5\ntarget_epsilon = 100.0\n"
                        "delta = 1e-5\n",
           "secagg": MEAN + "[compression]\nclip_norm = 1.0\n[secure_aggregation]\nenabled = true\n"}
ROW_NUMBERS = ("participants", "selected", "bytes_up", "bytes_down", "seconds")  # always numbers
EVAL_NUMBERS = ("global_accuracy", "global_loss", "personalized_accuracy_mean")  # numbers once a round committed


def cover(factors: dict[str, tuple], rng: random.Random, candidates: int = 30) -> list[dict]:
    """Greedy pairwise cover: every (factor a = u, factor b = v) pair appears in some row."""
    names = list(factors)
    uncovered = {((a, u), (b, v)) for a, b in itertools.combinations(names, 2)
                 for u in factors[a] for v in factors[b]}
    rows = []
    while uncovered:
        best, best_gain = None, -1
        for _ in range(candidates):
            # seed the row with one uncovered pair, then fill the other factors in random order, each with
            # the value that covers the most still-uncovered pairs with what the row holds so far
            (a, u), (b, v) = rng.choice(sorted(uncovered, key=repr))
            row = {a: u, b: v}
            for name in rng.sample(names, len(names)):
                if name in row:
                    continue
                row[name] = max(factors[name], key=lambda x: (sum(
                    (((n, row[n]), (name, x)) if names.index(n) < names.index(name) else ((name, x), (n, row[n])))
                    in uncovered for n in row), rng.random()))
            gain = sum(((p, row[p]), (q, row[q])) in uncovered for p, q in itertools.combinations(names, 2))
            if gain > best_gain:
                best, best_gain = row, gain
        uncovered -= {((p, best[p]), (q, best[q])) for p, q in itertools.combinations(names, 2)}
        rows.append(best)
    return rows


def argv(row: dict, tmp: Path) -> list[str]:
    devices = LIMIT_DEVICES[row["dataset"]] if row["devices"] == "limit" else row["devices"]
    # "all" near the limit is capped at 50: 2 rounds of all 2,000 mnist5k devices took 295 s here, past the cap
    per_round = (devices if row["devices"] != "limit" else min(devices, 50)) if row["clients_per_round"] == "all" else 1
    args = ["simulate", "--quiet", "--rounds", "2", "--dataset", row["dataset"], "--seed", str(row["seed"]),
            "--devices", str(devices), "--clients-per-round", str(per_round),
            "--strategy", row["strategy"], "--personalization", row["personalization"],
            "--aggregator", row["aggregator"], *COMPRESSION[row["compression"]]]
    if row["dataset"] != "synthetic":  # synthetic generates one client per device: no --partition
        args += ["--partition", row["partition"]]
    if row["privacy"] == "clip":
        args += ["--clip-norm", "1.0"]
    elif row["privacy"] == "norm_bound":
        args += ["--norm-bound", "5.0"]
    elif row["privacy"] in CONFIGS:
        (tmp / "c.toml").write_text(CONFIGS[row["privacy"]])
        args += ["--config", str(tmp / "c.toml")]
    if row["attack"] != "none":
        args += ["--attack", row["attack"], "--attackers", "0.2"]
    if row.get("transport") == "mqtt":
        args += ["--transport", "mqtt", "--round-deadline", "20"]
    return args + ["--json", str(tmp / "run.json")]


def bad_numbers(doc: dict) -> list[str]:
    """Where run.json has NaN/None/inf in a field its schema promises is a number."""
    found = []
    for r in doc.get("rounds", []):
        keys = ROW_NUMBERS + (EVAL_NUMBERS if r.get("committed") else ())
        for k in keys:
            x = r.get(k)
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x):
                found.append(f"round {r.get('round')} {k}={x!r}")
    if not doc.get("rounds"):
        found.append("no rounds")
    return found


def run_one(row: dict, timeout: float = 60.0) -> dict:
    with tempfile.TemporaryDirectory(prefix="simmatrix-") as d:
        tmp = Path(d)
        cmd = [FEDGE, *argv(row, tmp)]
        t0 = time.monotonic()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp)
        except subprocess.TimeoutExpired:
            return {"row": row, "argv": cmd[1:], "outcome": "hang", "seconds": timeout}
        seconds = round(time.monotonic() - t0, 2)
        err = p.stderr.strip().splitlines()
        last = err[-1] if err else ""
        result = {"row": row, "argv": [a if not a.startswith(d) else Path(a).name for a in cmd[1:]],
                  "rc": p.returncode, "seconds": seconds, "stderr_last": last[:400]}
        if "Traceback" in p.stderr or p.returncode not in (0, 1, 2):
            result.update(outcome="traceback", stderr_tail=p.stderr[-3000:])
        elif p.returncode == 0:
            doc = json.loads((tmp / "run.json").read_text())
            bad = bad_numbers(doc)
            result.update(outcome="bad_numbers" if bad else "ok", bad=bad[:6],
                          final_accuracy=doc["rounds"][-1].get("global_accuracy") if doc["rounds"] else None)
        elif last.startswith("fedge: error:"):
            result["outcome"] = "named_error"
        else:
            result.update(outcome="traceback", stderr_tail=p.stderr[-3000:])
        return result


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=0, help="run only the first N rows (a smoke test)")
    ap.add_argument("--mqtt", type=int, default=6, help="extra --transport mqtt rows")
    ap.add_argument("--covers", type=int, default=2, help="independent pairwise covers (each pair >= this often)")
    a = ap.parse_args()
    rng = random.Random(20261206)
    rows = [row for _ in range(a.covers) for row in cover(FACTORS, rng)]
    small = [r for r in rows if r["devices"] in (2, 7)]  # a thread per device over a real broker: keep it small
    mqtt = [dict(r, transport="mqtt") for r in rng.sample(small, a.mqtt)]
    rows = rows + mqtt
    if a.limit:
        rows = rows[:a.limit]
    print(f"{len(rows)} runs", file=sys.stderr)
    t0 = time.monotonic()
    results: list[dict] = []

    def write() -> dict:  # after every run, so a probe stopped early keeps what it ran
        counts: dict[str, int] = {}
        for r in results:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        doc = {"fedge": FEDGE, "factors": {k: list(v) for k, v in FACTORS.items()}, "limit_devices": LIMIT_DEVICES,
               "runs_planned": len(rows), "runs": len(results), "mqtt_runs": len(mqtt), "counts": counts,
               "wall_s": round(time.monotonic() - t0, 1), "results": results}
        Path(a.out).write_text(json.dumps(doc, indent=1))
        return counts

    with ThreadPoolExecutor(a.jobs) as pool:
        for i, r in enumerate(pool.map(run_one, rows)):
            results.append(r)
            counts = write()
            print(f"{i + 1}/{len(rows)} {r['outcome']} {r.get('seconds')}s {r.get('stderr_last', '')[:160]}",
                  file=sys.stderr, flush=True)
    print(json.dumps(counts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
