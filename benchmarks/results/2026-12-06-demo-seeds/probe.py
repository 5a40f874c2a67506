"""Run one demo configuration on seeds 0-5 and write seed -> numbers as JSON.

    python probe.py NAME --pretrain "--epochs 40" --simulate "--server-lr 0.03" [--spec FILE] [--seeds 0,1,...]

Each seed runs `fedge pretrain --seed S --out TMP` then `make demo`'s simulate with `--seed S`
and the extra flags (later flags win: `--rounds 1 --central-epochs 40 --baselines central`
screens a configuration by its central ceiling alone), one run at a time. Writes NAME.json
beside this file, rewritten after every seed, so a stopped probe keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FEDGE = str(Path(sys.executable).parent / "fedge")
DEMO_SIMULATE = "--lr 0.01 --clients-per-round 20 --strategy fedadam --baselines local,central --quiet"


def one_seed(seed: int, pretrain: str, simulate: str, spec: str | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="demo-seeds-") as tmp:
        p = Path(tmp) / "p"
        spec_flag = ["--spec", spec] if spec else []
        t0 = time.monotonic()
        pre = subprocess.run([FEDGE, "pretrain", "--out", str(p), "--seed", str(seed), *spec_flag,
                              *shlex.split(pretrain)], check=True, capture_output=True, text=True)
        t1 = time.monotonic()
        run_json = Path(tmp) / "run.json"
        subprocess.run([FEDGE, "simulate", "--model", str(p / "model.toml"), "--data", str(p / "clients"),
                        "--seed", str(seed), *shlex.split(DEMO_SIMULATE), *shlex.split(simulate),
                        "--json", str(run_json)], check=True, capture_output=True, text=True)
        t2 = time.monotonic()
        run = json.loads(run_json.read_text())
    pretrained = float(pre.stdout.split("accuracy ")[1].split()[0])
    final, base = run["summary"]["final"], run["baselines"]
    return {
        "pretrained": pretrained,
        "global": round(final["final_global_accuracy"], 4),
        "personalized_mean": round(final["final_personalized_accuracy_mean"], 4),
        "personalized_min": round(final["final_personalized_accuracy_min"], 4),
        "local_only_mean": round(base["local_only"]["accuracy_mean"], 4) if "local_only" in base else None,
        "local_only_min": round(base["local_only"]["accuracy_min"], 4) if "local_only" in base else None,
        "central": round(base["central"]["accuracy"], 4) if "central" in base else None,
        "global_curve": [None if r["global_accuracy"] is None else round(r["global_accuracy"], 4)
                         for r in run["rounds"]],
        "pretrain_s": round(t1 - t0, 1),
        "simulate_s": round(t2 - t1, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--pretrain", default="")
    ap.add_argument("--simulate", default="")
    ap.add_argument("--spec", default=None)
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    args = ap.parse_args()
    out = HERE / f"{args.name}.json"
    record = {"pretrain": args.pretrain, "simulate": f"{DEMO_SIMULATE} {args.simulate}".strip(),
              "spec": Path(args.spec).read_text() if args.spec else None, "seeds": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
        record["seeds"][str(seed)] = r = one_seed(seed, args.pretrain, args.simulate, args.spec)
        print(args.name, seed, {k: v for k, v in r.items() if k != "global_curve"}, flush=True)
        g = [s["global"] for s in record["seeds"].values()]
        record["global_min"] = min(g)
        out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
