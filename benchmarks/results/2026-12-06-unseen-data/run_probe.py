"""How runs.json was made (a record, not a tool): every case of make_data.py, seeds 0-3,
`fedge simulate --data DIR --rounds R --seed S [extra] --quiet --json ...` with defaults otherwise.

    python run_probe.py DATA OUT FEDGE [case ...]     # appends to OUT/runs.jsonl
    python run_probe.py DATA OUT FEDGE --only=--standardize case ...   # only that variant
    python run_probe.py DATA OUT FEDGE --only= --seeds=0,1 case ...    # default flags only, seeds 0 and 1
"""

import json
import subprocess
import sys
import time
from pathlib import Path

DATA, OUT, FEDGE = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
EXTRA = {"wine-raw": [[], ["--standardize"]], "bc-raw": [[], ["--standardize"]], "scale-1e4": [[], ["--standardize"]],
         "wine-raw-f64": [[], ["--standardize"]], "digits-int": [[], ["--standardize"]]}
ROUNDS = 5
OUT.mkdir(parents=True, exist_ok=True)
ONLY = [a.split("=", 1)[1].split() for a in sys.argv[4:] if a.startswith("--only=")]
SEEDS = [int(s) for a in sys.argv[4:] if a.startswith("--seeds=") for s in a.split("=", 1)[1].split(",")] or range(4)
cases = [a for a in sys.argv[4:] if not a.startswith("--")] or sorted(p.name for p in DATA.iterdir() if p.is_dir())
for case in cases:
    oracle = json.loads((DATA / f"{case}.oracle.json").read_text())
    for extra in ONLY or EXTRA.get(case, [[]]):
        for seed in SEEDS:
            tag = f"{case}{''.join(extra)}-{seed}"
            cmd = [FEDGE, "simulate", "--data", str(DATA / case), "--rounds", str(ROUNDS), "--seed", str(seed),
                   *extra, "--quiet", "--json", str(OUT / f"{tag}.json")]
            t = time.time()
            p = subprocess.run(cmd, capture_output=True, text=True)
            command = " ".join(["fedge", *cmd[1:]])
            row = {"case": case, "command": command.replace(str(DATA) + "/", "DATA/").replace(str(OUT) + "/", "OUT/"),
                   "seed": seed, "rc": p.returncode, "wall_s": round(time.time() - t, 1),
                   "oracle_logreg_accuracy": oracle["oracle_logreg_accuracy"],
                   "majority_accuracy": oracle["majority_accuracy"],
                   "stderr_tail": [ln for ln in p.stderr.splitlines() if ln.strip()][-4:],
                   "traceback": "Traceback" in p.stderr}
            js = OUT / f"{tag}.json"
            if p.returncode == 0 and js.exists():
                d = json.loads(js.read_text())
                s = d["summary"]
                row.update(global_accuracy=s["final"]["final_global_accuracy"],
                           personalized_mean=s["final"]["final_personalized_accuracy_mean"],
                           committed_rounds=sum(r["committed"] for r in d["rounds"]),
                           nan_loss=any(r.get("train_loss") is not None and r["train_loss"] != r["train_loss"]
                                        for r in d["rounds"]),
                           declines=s["declines"], abandoned=s["abandoned"], constant_guess=s["constant_guess"],
                           num_classes=d["model"].get("num_classes"),
                           standardize=d["config"].get("standardize"),
                           standardize_why=d["config"].get("standardize_why"))
            print(json.dumps(row), flush=True)
            with open(OUT / "runs.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")
