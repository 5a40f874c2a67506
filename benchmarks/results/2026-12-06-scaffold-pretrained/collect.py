"""Collects the runs of repro.py and paper_loop.py (their JSON files in one folder) into
scaffold-pretrained.json, curves and summaries only (per-task rows only for the collapse).

    python collect.py RUNS_DIR OUT.json
"""

import json
import re
import sys
from pathlib import Path

runs, out = Path(sys.argv[1]), sys.argv[2]


def curve(doc, key):
    return [r.get(key) for r in doc["rounds_log"]]


def fleet_run(doc):
    return {"command": doc["command"], "final_global_accuracy": round(doc["final_global_accuracy"], 4),
            "declines": doc["declines"], "global_accuracy": curve(doc, "global_accuracy"),
            "c_norm": curve(doc, "c_norm"), "mean_delta_norm": curve(doc, "mean_dy_norm"),
            "max_correction_norm": curve(doc, "max_correction_norm"), "clipped_steps": curve(doc, "clipped_steps")}


def paper_run(doc):
    acc = curve(doc, "global_accuracy")
    return {"command": doc["command"], "final_global_accuracy": round(doc["final_global_accuracy"], 4),
            "first_round_under_0.5": next((i + 1 for i, a in enumerate(acc) if a < 0.5), None),
            "global_accuracy": acc, "expected_correction_push_norm": curve(doc, "expected_push_norm"),
            "correction_push_norm": curve(doc, "correction_push_norm"), "c_norm": curve(doc, "c_norm")}


doc = {"what": "SCAFFOLD from the pretrained start on Dirichlet 0.1 (heterogeneity grid cell: MNIST-5k, 50 devices, "
               "10 a round, 5 epochs, SGD lr 0.02 momentum 0.9, batch 20, aggregator mean). 'before' ran at dce2b1f "
               "(deltas weighted by examples), 'after' with SCAFFOLD's plain mean of the deltas, "
               "'momentum0' at dce2b1f with local momentum 0. The random-backbone 'before' rows ran after the fix "
               "with scaffold_weights=examples (repro.py), which reproduces dce2b1f bit for bit (the ablation "
               "'fixed-code-scaffold_weights-examples' against 'ablation-s1-none').",
       "collected_by": "python benchmarks/results/2026-12-06-scaffold-pretrained/collect.py " + " ".join(sys.argv[1:]),
       "fleet": {}, "paper_loop": {}, "ablations_seed1_30_rounds_before": {}, "collapse_tasks_seed1_before": []}
for path in sorted(runs.glob("*.json")):
    d = json.loads(path.read_text())
    name = path.stem
    if name.startswith(("before-", "after-", "momentum0-")):
        doc["fleet"][name] = fleet_run(d)
        if name == "before-s1-none":
            doc["collapse_tasks_seed1_before"] = [
                {"round": r["round"], "global_accuracy": r["global_accuracy"],
                 "tasks": [{k: t.get(k) for k in ("n", "steps", "correction", "dy")} for t in r["tasks"]]}
                for r in d["rounds_log"][15:23]]
    elif name.startswith("paper-"):
        doc["paper_loop"][name] = paper_run(d)
    elif name.startswith("ablation-"):
        doc["ablations_seed1_30_rounds_before"][name] = {
            "command": d["command"], "final_global_accuracy": round(d["final_global_accuracy"], 4),
            "declines": d["declines"], "global_accuracy": curve(d, "global_accuracy")}
text = json.dumps(doc, indent=1)
text = re.sub(r"\[\s+([^\[\]{}]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)  # flat lists
Path(out).write_text(text + "\n")
