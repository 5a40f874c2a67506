"""How pixels.json was made (a record, not a tool): MNIST-5k over 20 files, Dirichlet 0.1, written
once as `fedge data split` writes it (float32 in [0, 1], x / 255) and once as the same pixels saved
as float32 0..255 (np.round(x * 255): the integers back, checked), then
`fedge simulate --data DIR --rounds 5 --seed S --quiet --json ...` with default flags, seeds 0 and 1,
once per code tree (FEDGE_TREES: label=path of a folder holding the `fedge` package; the path goes
first on PYTHONPATH, ahead of the venv's editable install).

    python pixels.py DATA OUT PYTHON before=/tmp/pixels-before after=/tmp/pixels-after

It writes OUT/rows.json; pixels.json is those rows with each run's global accuracy by round (from
its run.json) and a check that the after tree loads float-0-255 bit for bit as it loads unit.
The trees were `git archive ec125bf` (before) and `git archive 2ba99f6` (after) under DIR/fedge.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA, OUT, PYTHON = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
TREES = dict(a.split("=", 1) for a in sys.argv[4:])
ROUNDS, SEEDS = 5, (0, 1)


def make_data() -> None:
    unit, raw = DATA / "unit", DATA / "float-0-255"
    if not unit.exists():
        subprocess.run([PYTHON, "-m", "fedge.tools.cli", "data", "split", "--dataset", "mnist5k", "--devices", "20",
                        "--partition", "dirichlet", "--alpha", "0.1", "--seed", "0", "--out", str(unit)], check=True)
    raw.mkdir(exist_ok=True)
    for f in sorted(unit.glob("*.npz")):
        saved = dict(np.load(f))
        out = {}
        for k, v in saved.items():
            if k.startswith("x_"):
                pixels = np.round(v.astype(np.float64) * 255)
                # the integers back: uint8 read as a device reads it is the [0, 1] file, bit for bit
                assert (pixels.astype(np.uint8).astype(np.float32) / np.float32(255)).tobytes() == v.tobytes()
                v = pixels.astype(np.float32)
            out[k] = v
        np.savez(raw / f.name, **out)


def main() -> None:
    make_data()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = []
    for label, tree in TREES.items():
        for case in ("float-0-255", "unit"):
            for seed in SEEDS:
                js = OUT / f"{label}-{case}-{seed}.json"
                cmd = [PYTHON, "-m", "fedge.tools.cli", "simulate", "--data", str(DATA / case), "--rounds", str(ROUNDS),
                       "--seed", str(seed), "--quiet", "--json", str(js)]
                t, env = time.time(), {"PYTHONPATH": tree, "PATH": "/usr/bin:/bin"}
                p = subprocess.run(cmd, capture_output=True, text=True, env=env)
                row = {"code": label, "case": case, "seed": seed, "rc": p.returncode,
                       "wall_s": round(time.time() - t, 1),
                       "command": f"fedge simulate --data DATA/{case} --rounds {ROUNDS} --seed {seed} --quiet "
                                  f"--json OUT",
                       "load_warnings": [ln for ln in p.stderr.splitlines() if "far from standardized" in ln]}
                if p.returncode == 0:
                    d = json.loads(js.read_text())
                    row.update(global_accuracy=d["summary"]["final"]["final_global_accuracy"],
                               personalized_mean=d["summary"]["final"]["final_personalized_accuracy_mean"],
                               standardize=d["config"].get("standardize"),
                               standardize_why=d["config"].get("standardize_why"),
                               divided_by_255=d["config"].get("divided_by_255"))
                print(json.dumps(row), flush=True)
                rows.append(row)
    (OUT / "rows.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
