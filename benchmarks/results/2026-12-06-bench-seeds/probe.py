"""Probe every `fedge bench` / `fedge audit` subcommand in a quick setting, on seeds 1, 2, 7,
into a folder that does not exist yet ("new") and into one that exists holding an unrelated
file ("busy": notes.txt, which must come out byte-identical), then once more into the same
folder ("rerun"). Checks exit 0, the JSON parses, the promised keys and types (numbers finite
or null), the Markdown/PNG beside it non-empty. Two commands at a time (2 shared cores).

    .venv-test/bin/python benchmarks/results/2026-12-06-bench-seeds/probe.py OUT.json [NAME ...]

Environment, to fit the time: PROBE_SEEDS (default 1,2,7), PROBE_MODES (new,rerun,busy),
PROBE_OTHER_SEED_MODES (the modes for seeds other than 1; default PROBE_MODES), PROBE_LANES
(commands at a time, default 2). runs.json was made with several such calls (README.md).
"""

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FEDGE = str(Path(sys.executable).with_name("fedge"))
SEEDS = (1, 2, 7)
SEEDS_RUN = tuple(int(s) for s in os.environ.get("PROBE_SEEDS", "1,2,7").split(","))  # fewer when short of time
MODES = ("new", "rerun", "busy")
NOTE = b"unrelated: fedge must not touch this\n"


# name -> (argv after `fedge`, takes --seed, files promised beside out.json, checker of the doc)
def _num(v):
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))


def _nonfinite(obj, path="$"):
    """Paths of floats that are NaN/inf (json.loads accepts NaN and Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return [path]
    if isinstance(obj, dict):
        return [p for k, v in obj.items() for p in _nonfinite(v, f"{path}.{k}")]
    if isinstance(obj, list):
        return [p for i, v in enumerate(obj) for p in _nonfinite(v, f"{path}[{i}]")]
    return []


def check_robustness(doc):
    bad = []
    if not isinstance(doc.get("cells"), list) or not doc["cells"]:
        return ["cells missing or empty"]
    for c in doc["cells"]:
        for k in ("attack", "defense", "partition"):
            if not isinstance(c.get(k), str):
                bad.append(f"cell.{k}={c.get(k)!r}")
        if not isinstance(c.get("default"), bool):
            bad.append(f"cell.default={c.get('default')!r}")
        for k in ("attackers_fraction", "final_accuracy", "backdoor_success"):
            if k not in c or not _num(c[k]):
                bad.append(f"cell.{k}={c.get(k)!r}")
    return bad


def check_async(doc):
    bad = [] if _num(doc.get("target_accuracy")) and doc.get("target_accuracy") is not None else ["target_accuracy"]
    for side in ("sync", "async"):
        s = doc.get(side)
        if not isinstance(s, dict):
            bad.append(f"{side} missing")
            continue
        for k in ("time_to_target_seconds", "bytes_up", "final_accuracy"):
            if k not in s or not _num(s[k]):
                bad.append(f"{side}.{k}={s.get(k)!r}")
        if s.get("time_to_target_seconds") is None and "time_to_target_seconds" in s:
            bad.append(f"note: {side}.time_to_target_seconds null (target never reached)")
    return bad


def check_ingest(doc):
    bad = []
    for k in (
        "update_bytes",
        "coordinator_updates_per_second",
        "raw_paho_updates_per_second",
        "aggregate_bytes_per_second",
        "np_add_bytes_per_second",
        "durable_writes_per_task",
    ):
        if k not in doc or not _num(doc[k]) or doc[k] is None and k != "durable_writes_per_task":
            bad.append(f"{k}={doc.get(k)!r}")
    if not isinstance(doc.get("stages"), (dict, list)):
        bad.append("stages")
    return bad


def check_keys(*keys):
    return lambda doc: [k for k in keys if k not in doc]


def files_beside(suffixes):
    return lambda out: [out.with_suffix(s) for s in suffixes]


CASES = {
    "robustness": (
        ["bench", "robustness", "--quick", "--workers", "1", "--json", "{out}"],
        True,
        [".md", ".png"],
        check_robustness,
    ),
    "robustness-compressed": (
        ["bench", "robustness", "--quick", "--compressed", "--workers", "1", "--json", "{out}"],
        True,
        [".md", ".png"],
        check_robustness,
    ),
    "async": (["bench", "async", "--quick", "--json", "{out}"], True, [".md", ".png"], check_async),
    "ingest": (
        ["bench", "ingest", "--devices", "50", "--update-kb", "4", "--repeats", "1", "--json", "{out}"],
        False,
        [],
        check_ingest,
    ),
    "heterogeneity": (
        ["bench", "heterogeneity", "--quick", "--workers", "1", "--json", "{out}"],
        True,
        ["report.md", "accuracy_vs_round.png"],
        None,
    ),
    "privacy": (["bench", "privacy", "--quick", "--json", "{out}"], True, [".png"], check_keys("runs")),
    "train-step": (
        [
            "bench",
            "train-step",
            "--models",
            "mlp-784-lora",
            "--backends",
            "numpy",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--json",
            "{out}",
        ],
        False,
        [],
        None,
    ),
    "mqtt": (
        ["bench", "mqtt", "--devices", "5", "--update-kb", "4", "--timeout", "60", "--json", "{out}"],
        False,
        [],
        None,
    ),
    "brokers": (
        ["bench", "brokers", "--devices", "2", "--messages", "10", "--kb", "1", "--timeout", "30", "--json", "{out}"],
        False,
        [],
        None,
    ),
    "screening": (["bench", "screening", "--inputs", "10", "--repeats", "1", "--json", "{out}"], False, [], None),
    "secagg": (
        [
            "bench",
            "secagg",
            "--devices",
            "10",
            "--dropouts",
            "0.1",
            "--bits",
            "16",
            "--dimension",
            "100",
            "--repeats",
            "1",
            "--json",
            "{out}",
        ],
        True,
        [],
        check_keys("runs"),
    ),
    "scale": (
        ["bench", "scale", "--sizes", "100", "--clients-per-round", "10", "--rounds", "1", "--json", "{out}"],
        True,
        [],
        None,
    ),
    "leakage": (
        [
            "audit",
            "leakage",
            "--devices",
            "2",
            "--steps",
            "1",
            "--batches",
            "1",
            "--png",
            "{dir}/leak.png",
            "--json",
            "{out}",
        ],
        True,
        ["leak.png"],
        check_keys("plain", "secagg"),
    ),
}


def one(name, seed, mode, root):
    argv, seeded, beside, checker = CASES[name]
    folder = root / f"{name}-s{seed}" / ("busy" if mode == "busy" else "new")  # rerun: into new again
    note = folder / "notes.txt"
    if mode == "busy":
        folder.mkdir(parents=True, exist_ok=True)
        note.write_bytes(NOTE)
    out = folder / "out.json"
    cmd = [FEDGE] + [a.format(out=out, dir=folder) for a in argv] + (["--seed", str(seed)] if seeded else [])
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=420)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        rc, err = "timeout", ""
    rec = {
        "name": name,
        "seed": seed if seeded else None,
        "mode": mode,
        "rc": rc,
        "seconds": round(time.monotonic() - t0, 1),
        "problems": [],
    }
    if rc != 0:
        rec["stderr_tail"] = err[-1500:]
    if mode == "busy" and (not note.exists() or note.read_bytes() != NOTE):
        rec["problems"].append("notes.txt changed or gone")
    try:
        doc = json.loads(out.read_text())
        rec["problems"] += [f"non-finite {p}" for p in _nonfinite(doc)]
        if checker:
            rec["problems"] += checker(doc if isinstance(doc, dict) else {"list": doc})
    except (OSError, ValueError) as exc:
        rec["problems"].append(f"json: {exc}")
    for b in beside:
        f = out.with_suffix(b) if b.startswith(".") else folder / b
        if not f.exists() or f.stat().st_size == 0:
            rec["problems"].append(f"{f.name} missing or empty")
    print(json.dumps(rec), flush=True)
    return rec


def main():
    dest = Path(sys.argv[1])
    names = sys.argv[2:] or list(CASES)
    root = Path(tempfile.mkdtemp(prefix="bench-seeds-"))
    jobs = []
    for name in names:
        seeds = SEEDS_RUN if CASES[name][1] else (1,)
        for seed in seeds:
            jobs.append((name, seed))
    modes = os.environ.get("PROBE_MODES", ",".join(MODES)).split(",")
    other = os.environ.get("PROBE_OTHER_SEED_MODES", ",".join(modes)).split(",")  # seeds 2 and 7 (time)
    with ThreadPoolExecutor(int(os.environ.get("PROBE_LANES", "2"))) as pool:  # each job: its modes in order
        runs = pool.map(lambda j: [one(*j, m, root) for m in (modes if j[1] == 1 else other)], jobs)
        results = [r for rs in runs for r in rs]
    dest.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
