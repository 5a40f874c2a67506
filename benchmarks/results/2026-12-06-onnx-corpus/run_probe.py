"""How runs.json was made (a record, not a tool): every ONNX model that ships in the `onnx` wheel's
backend test data (node, pytorch-converted, pytorch-operator, simple, light; real/ holds only
download links) and in onnxruntime's datasets folder, imported the way a user would:

    fedge build-artifacts --from-onnx MODEL OUTDIR        # automatic cut, kept classifier, ort-training auto

through fedge's own `main` in a forked child process (the probe imports fedge, onnx and onnxruntime
once; a fresh interpreter per model cost 4-5 s on the shared machine), with a 60 s timeout and a
2 GiB address-space cap (RLIMIT_AS). Where that builds, a second child (same caps) runs a short
training task on the artifacts: random inputs of the manifest's input shape through
ModelRuntime.embed, 3 SGD and 3 AdamW steps of the portable backend (and of ort-training where
ort/ was built) on random labels, then predict; any exception or a non-finite loss or logit is a failure of the import.

    python run_probe.py OUT [--code LABEL] [--only SUBSTRING ...]   # writes OUT/runs.jsonl
    python run_probe.py OUT --new-head EARLIER/runs.jsonl           # the refusal's advice, below
    python run_probe.py --summary OUT/runs.jsonl ... > runs.json     # folds rows into runs.json

A second pass follows the advice of the most common refusal ("found no dense tail ... give --cut NAME
with --classes K"): each model so refused, again with `--cut OUTPUT --classes 3` (OUTPUT: the
graph's first output), so the whole source is the frozen backbone and a new head trains on it. That
pass takes a deterministic sample: the first model (by path) of each distinct set of op types.

Outcomes: imported (and trained) / named (exit 2, "fedge: error: Class: message") / traceback /
timeout / killed (a signal, e.g. the memory cap) / train_failed (built, then the training task failed) /
imported_nan_inputs (built, but its backbone gives NaN or Inf on N(0, 1) inputs, which lie outside its
ops' domain, e.g. Acos, Log: the training task is not run).
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

from fedge.edge_runtime.kernel.manifest import load_manifest
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.trainer import make_backend
from fedge.edge_runtime.trainer.base import StepHyper
from fedge.models import build, onnx_import  # noqa: F401 - imported once, before the forks
from fedge.tools import cli

HERE = Path(__file__).resolve().parent
TIMEOUT_S, MEMORY = 60, 2 << 30
FOLDERS = ("node", "pytorch-converted", "pytorch-operator", "simple", "light")



def corpus() -> list[Path]:
    import onnx
    import onnxruntime

    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    models = sorted(p for f in FOLDERS for p in (data / f).glob("*/model.onnx"))
    models += sorted((data / "light").glob("*.onnx"))
    models += sorted((Path(onnxruntime.__file__).parent / "datasets").glob("*.onnx"))
    return models


def _forked(call) -> tuple[str, dict]:
    """Run call() in a forked child (the parent has imported fedge, onnx and onnxruntime once: a
    fresh interpreter per model cost 4-5 s on the shared machine) under the caps; its stdout and
    stderr go to files; an exception that escapes is printed as Python prints it, exit 1."""
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "out"), Path(tmp, "err")
        t = time.time()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            rc = 1
            try:
                resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
                os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT), 1)
                os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT), 2)
                rc = call()
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - what a user would see: the traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc or 0)
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.time() - t > TIMEOUT_S:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout", {"seconds": round(time.time() - t, 2)}
            time.sleep(0.02)
        seconds = round(time.time() - t, 2)
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    if os.WIFSIGNALED(status):
        return "killed", {"seconds": seconds, "signal": os.WTERMSIG(status), "tail": stderr.splitlines()[-3:]}
    rc = os.WEXITSTATUS(status)
    row = {"seconds": seconds, "rc": rc}
    if "Traceback" in stderr or "MemoryError" in stderr:
        return "traceback", {**row, "tail": stderr.splitlines()[-3:]}
    named = re.search(r"^fedge: error: (\w+): (.*)$", stderr, re.M)
    if rc == 2 and named:
        return "named", {**row, "error": named.group(1), "message": named.group(2)[:600]}
    if rc == 0:
        return "ok", {**row, "stdout": stdout.strip()[-400:],
                      "warnings": [ln[:300] for ln in stderr.splitlines() if "WARNING" in ln][:3]}
    return "other", {**row, "tail": (stderr or stdout).splitlines()[-3:]}


def _train(art: str) -> int:
    m = load_manifest(art)
    rt = ModelRuntime(art, expected_model_id=m.model_id)
    rng = np.random.default_rng(0)
    z = rt.embed(rng.normal(size=(8, *m.input_shape)).astype(np.float32))
    if not np.all(np.isfinite(z)):  # N(0, 1) outside the source's domain (Acos, Log, ...): not the import's fault
        print("nonfinite embeddings")
        return 3
    k = m.spec["num_classes"]
    y = rng.integers(0, k, size=8).astype(np.int64)
    init = {**rt.initial("shared"), **rt.initial("personal")}
    backends = ["portable"] + (["ort-training"] if any(f.startswith("ort/") for f in m.files) else [])
    for name in backends:
        for opt in ("sgd", "adamw"):
            b = make_backend(name, art, m, opt)
            b.start(init, None, init, None)
            losses = [b.step(z, y, StepHyper(lr=0.01)) for _ in range(3)]
            logits = b.predict(b.current()[0], z)
            assert np.all(np.isfinite(losses)), (name, opt, losses)
            assert all(np.all(np.isfinite(v)) for v in logits.values()), (name, opt, "logits")
    print("trained", backends, "embedding", z.shape, "classes", k)
    return 0


def _folder(rel: str) -> str:
    return "light" if "/light/" in rel else rel.split("/")[-3] if "/data/" in rel else rel.split("/")[0]


def probe(model: Path, new_head: bool = False) -> dict:
    rel = str(model).split("site-packages/", 1)[1]
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["build-artifacts", "--from-onnx", str(model), f"{tmp}/art"]
        if new_head:  # what the "found no dense tail" refusal advises: a new head on a tensor (the output)
            import onnx

            argv[3:3] = ["--cut", onnx.load(model, load_external_data=False).graph.output[0].name, "--classes", "3"]
        out, row = _forked(lambda: cli.main(argv))
        row = {"model": rel, "folder": _folder(rel),
               "command": "fedge " + " ".join(argv[:-1]).replace(str(model), "MODEL") + " OUT", "outcome": out, **row}
        if out == "ok":
            t_out, t_row = _forked(lambda: _train(f"{tmp}/art"))
            row["train"] = {"outcome": t_out, **t_row}
            row["outcome"] = "imported" if t_out == "ok" else "imported_nan_inputs" if t_out == "other" and \
                t_row.get("rc") == 3 else "train_failed"
    return row


def _one_per_op_set(models) -> set[str]:
    import onnx

    root, chosen, seen = Path(onnx.__file__).parent.parent, set(), set()
    for rel in sorted(models):
        ops = frozenset(n.op_type for n in onnx.load(root / rel, load_external_data=False).graph.node)
        if ops not in seen:
            seen.add(ops)
            chosen.add(rel)
    return chosen


def main(argv: list[str]) -> None:
    if argv[:1] == ["--summary"]:
        return summary([Path(a) for a in argv[1:]])
    out = Path(argv[0])
    code = argv[argv.index("--code") + 1] if "--code" in argv else "unlabelled"
    only = [argv[i + 1] for i, a in enumerate(argv) if a == "--only"]
    # --new-head RUNS.jsonl: each model that run refused for want of a dense tail, again with --cut OUTPUT --classes 3
    advised = None
    if "--new-head" in argv:
        rows = [json.loads(ln) for ln in Path(argv[argv.index("--new-head") + 1]).read_text().splitlines()]
        advised = _one_per_op_set(r["model"] for r in rows if "found no dense tail" in r.get("message", ""))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "runs.jsonl", "a") as fh:
        for model in corpus():
            if only and not any(s in str(model) for s in only):
                continue
            if advised is not None and str(model).split("site-packages/", 1)[1] not in advised:
                continue
            row = {**probe(model, advised is not None), "code": code}
            print(row["outcome"], row["model"], row.get("error", ""), row.get("tail", ""), flush=True)
            fh.write(json.dumps(row) + "\n")
            fh.flush()


REASONS = (("the model has", "more than one input"), ("not FLOAT (float32)", "input not float32"),
           ("computed by", "no dense tail: dense weights computed, not stored"),
           ("found no dense tail", "no dense tail"), ("training mode", "training-mode op"),
           ("no batch dimension", "input without a batch dimension"), (" values (written by", "cut not float32"),
           ("per-example shape", "cut's size unknown"),
           ("cannot load the backbone", "ONNX Runtime cannot run the backbone"),
           ("examples of a batch separately", "backbone mixes the batch"),
           ("row(s) of output", "backbone mixes the batch"),
           ("not a valid ONNX model", "fedge's backbone invalid (a bug)"))


def reason(row: dict) -> str:
    message = row.get("message", "")
    return next((why for key, why in REASONS if key in message), "other")


def summary(files: list[Path]) -> None:
    rows = [json.loads(ln) for f in files for ln in f.read_text().splitlines() if ln.strip()]
    counts: dict[str, dict] = {}
    for r in rows:
        r["folder"] = _folder(r["model"])
        for key in ("message", "stdout", "warnings", "tail"):  # the machine's paths, up to site-packages/
            if key in r:
                r[key] = json.loads(re.sub(r'/[^" ]*?/site-packages/', "", json.dumps(r[key])))
        r["command"] = re.sub(r"--from-onnx \S+", "--from-onnx MODEL", r["command"])
        r["pass"] = "new-head" if " --cut " in r["command"] else "default"
        if r["outcome"] == "named":
            r["reason"] = reason(r)
        c = counts.setdefault(f"{r['code']}, {r['pass']} pass", {"outcomes": {}, "refusal_reasons": {}})
        c["outcomes"][r["outcome"]] = c["outcomes"].get(r["outcome"], 0) + 1
        if "reason" in r:
            c["refusal_reasons"][r["reason"]] = c["refusal_reasons"].get(r["reason"], 0) + 1
    # a row of main's whose outcome and message are the branch's is left out (the counts keep it)
    branch = {(r["model"], r["pass"]): (r["outcome"], r.get("message")) for r in rows if r["code"].startswith("branch")}
    kept = [r for r in rows if r["code"].startswith("branch") or branch.get((r["model"], r["pass"])) != (
        r["outcome"], r.get("message"))]
    head = json.dumps({"schema": 1, "benchmark": "onnx-corpus", "note": NOTE, "counts": counts}, indent=1)[:-2]
    print(head + ',\n "runs": [\n' + ",\n".join("  " + json.dumps(r) for r in kept) + "\n ]\n}")


NOTE = ("Made by run_probe.py (its docstring says how). Corpus: onnx 1.16.2's backend/test/data (node 1,282, "
        "pytorch-converted 82, pytorch-operator 35, simple 23, light 9; real/ holds only download links) and "
        "onnxruntime 1.19.2 (training build)'s datasets (3): 1,434 models. Default pass: every model. New-head pass: "
        "the first model of each distinct op-type set among those the default pass refused for want of a dense "
        "tail (126 of 451), with --cut OUTPUT --classes 3. Measured on the shared 2-core machine, 2026-12-06; "
        "seconds are wall time under that load. 'main 13731ab': before this branch; 'branch onnx-corpus': after. "
        "runs: every row of the branch, and each row of main whose outcome or message differs from it (counts: all).")


if __name__ == "__main__":
    main(sys.argv[1:])
