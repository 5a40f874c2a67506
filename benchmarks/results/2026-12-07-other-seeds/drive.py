import json
import os
import subprocess
import sys
import time

FE = "/work/wt-redteam-seeds/.venv-test/bin/fedge"
OUT = "/tmp/redteam-seeds/runs"
os.makedirs(OUT, exist_ok=True)
only = sys.argv[1] if len(sys.argv) > 1 else ""
cases = []
for ds in ("mnist5k", "digits"):
    for part, extra in (("iid", ["--partition", "iid"]), ("dir0.1", []), ("dir0.5", ["--alpha", "0.5"])):
        for s in (3, 4, 5, 11):
            cases.append((ds, part, s, ["--dataset", ds, "--devices", "20", "--rounds", "10", *extra]))
for s in (3, 4, 5, 11):
    cases.append(("synthetic", "gen", s, ["--dataset", "synthetic", "--devices", "20", "--rounds", "10"]))
for ds in ("wine", "breast_cancer"):
    for part in ("iid", "dir0.1", "dir0.5"):
        for s in (3, 4, 5, 11):
            cases.append((ds, part, s, ["--data", f"/tmp/redteam-seeds/data/{ds}-{part}-s{s}", "--rounds", "10"]))
RESULTS = f"{OUT}/results.jsonl"
done = {json.loads(line)["tag"] for line in open(RESULTS)} if os.path.exists(RESULTS) else set()
order = {3: 0, 4: 1, 5: 2, 11: 3}
cases.sort(key=lambda c: (order[c[2]], ["digits", "wine", "breast_cancer", "synthetic", "mnist5k"].index(c[0])))
cases = [c for c in cases if f"{c[0]}-{c[1]}-s{c[2]}" not in done]
res = open(f"{OUT}/results.jsonl", "a")
for ds, part, s, args in cases:
    if only and not ds.startswith(only):
        continue
    tag = f"{ds}-{part}-s{s}"
    js = f"{OUT}/{tag}.json"
    t = time.time()
    try:
        p = subprocess.run([FE, "simulate", *args, "--seed", str(s), "--baselines", "local", "--json", js, "--quiet"],
                           capture_output=True, text=True, timeout=180)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        rc, err = "timeout", ""
    row = {"tag": tag, "rc": rc, "wall": round(time.time() - t, 1),
           "warn": [line for line in err.splitlines()
                    if "warning" in line.lower() or "error" in line.lower() or "Traceback" in line][:6],
           "traceback": "Traceback" in err}
    if rc == 0 and os.path.exists(js):
        bad = []
        d = json.load(open(js), parse_constant=lambda c, bad=bad: bad.append(c) or float(c))
        f = d["summary"]["final"]
        lo = (d.get("baselines") or {}).get("local_only") or {}
        row.update(g=f["final_global_accuracy"], p=f["final_personalized_accuracy_mean"],
                   pmin=f["final_personalized_accuracy_min"], l=lo.get("accuracy_mean"), lmin=lo.get("accuracy_min"),
                   ldiv=lo.get("diverged"), nonfinite=bad, cg=d["summary"]["constant_guess"],
                   declines=d["summary"]["declines"], abandoned=d["summary"]["abandoned"],
                   rounds=len(d["rounds"]), std=d["config"].get("standardize"))
    elif rc != 0:
        row["stderr_tail"] = err[-600:]
    print(json.dumps(row), flush=True)
    res.write(json.dumps(row) + "\n")
    res.flush()
