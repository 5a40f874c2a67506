"""Hostile values for every option of every `fedge` command (options.py lists them from the
parsers). Each case runs `fedge.tools.cli.main(argv)` in a forked child of one process that has
imported fedge once (a fresh interpreter per case costs seconds), with its own temporary folder
as the current folder, stdout/stderr to files and a wall-clock limit. The folder holds files
fedge did not write (FOREIGN); each is checked after the case: changed or gone is `clobbered`.

    .venv-test/bin/python benchmarks/results/2026-12-06-cli-fuzz/probe.py OUT.json [COMMAND-PREFIX ...]

Classes: refused (exit 1/2, last stderr line `fedge: error: ...` or argparse's usage error, no
traceback), traceback, accepted (exit 0: read by hand: a legitimate value, or one ignored),
timeout (ran past the limit: either validated late, or accepted and working), clobbered,
other (any other exit or message shape)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from options import all_commands  # noqa: E402

from fedge.tools.cli import main  # noqa: E402

LIMIT_S = float(os.environ.get("PROBE_LIMIT_S", "8"))
# Names fedge commands write, held by "someone else" in the folder an output option is pointed at.
FOREIGN = ["notes.txt", "report.md", "report.png", "manifest.json", "model.onnx", "pretrained.onnx", "model.toml",
           "c0.npz", "client_000.npz", "ca.crt", "ca.key", "mosquitto.conf", "acl", "passwd", "ejabberd.yml",
           "device.toml", "coordinator.toml", "run.json", "b.json", "identities.json", "d1.identity", "d1.toml",
           "fedge-coordinator.toml", "server.crt", "server.key", "data/keep.txt", "clients/c0.npz"]

BASE = {
    "simulate": "simulate --dataset digits --devices 2 --rounds 1 --quiet",
    "build-artifacts": "build-artifacts mnist-mlp-lora {T}/art",
    "pretrain": "pretrain --out {T}/p --dataset digits --epochs 1",
    "data split": "data split --dataset digits --devices 2 --out {T}/d",
    "device run": "device run --config {T}/missing.toml",
    "device init": "device init --out {T}/new.toml",
    "device probe": "device probe --json",
    "device export": "device export --config {T}/missing.toml --out {T}/x.onnx",
    "coordinator serve": "coordinator serve --config {T}/missing.toml",
    "coordinator privacy": "coordinator privacy --state {T}/missing.db",
    "provision ca": "provision ca --out {T}/o",
    "provision broker": "provision broker --out {T}/o",
    "provision ejabberd": "provision ejabberd --out {T}/o",
    "provision identity": "provision identity --id d1 --out {T}/o --directory {T}/o/ids.json",
    "provision device": "provision device --id d1 --out {T}/o",
    "provision coordinator": "provision coordinator --out {T}/o",
    "protocol-doc": "protocol-doc",
    "bench train-step": "bench train-step --json {T}/b.json --models mnist-mlp-lora --backends numpy --steps 2 "
                        "--warmup 0",
    "bench heterogeneity": "bench heterogeneity --json {T}/b.json --quick --rounds 1",
    "bench robustness": "bench robustness --json {T}/b.json --quick --rounds 1",
    "bench mqtt": "bench mqtt --devices 2 --json {T}/b.json --timeout 5",
    "bench brokers": "bench brokers --devices 2 --messages 10 --json {T}/b.json --timeout 5",
    "bench privacy": "bench privacy --json {T}/b.json --quick --rounds 1",
    "bench screening": "bench screening --json {T}/b.json --inputs 2 --repeats 1",
    "bench async": "bench async --json {T}/b.json --quick --rounds 1",
    "bench secagg": "bench secagg --json {T}/b.json --devices 3 --dimension 10 --repeats 1",
    "bench scale": "bench scale --json {T}/b.json --sizes 10 --rounds 1",
    "bench ingest": "bench ingest --devices 2 --repeats 1 --timeout 5 --json {T}/b.json",
    "audit leakage": "audit leakage --json {T}/b.json --devices 1 --steps 1 --batches 1",
}
NUMBERS = ["0", "-1", "1" + "0" * 30, "nan", "inf", "-0.0", "", "abc"]
INTS = ["0", "-1", "1" + "0" * 30, "", "abc"]
LISTS = ["", "abc", "0", "-1", "1" + "0" * 30, "nan", "1,,2", ","]
STRINGS = ["", "abc", "-1", "a/../../b", "x" * 5000]
PATHS = {"missing": "{T}/missing/x.json", "folder": "{T}/foreign", "file": "{T}/foreign/notes.txt",
         "under-a-file": "{T}/foreign/notes.txt/x", "unwritable": "/proc/fedge-probe/x", "dash": "-",
         "too-long": "{T}/" + "x" * 300}


def values(opt: dict) -> list[tuple[str, str]]:
    if opt["kind"] == "flag":
        return [("flag", None)]
    if opt["choices"]:
        return [("empty", "")]
    if opt["kind"] == "int":
        return [(v or "empty", v) for v in INTS]
    if opt["kind"] == "float":
        return [(v or "empty", v) for v in NUMBERS]
    if opt["kind"] == "path_arg":
        return list(PATHS.items())
    return [(v[:10] or "empty", v) for v in (LISTS if opt["nargs"] is None else STRINGS)] + \
        [("path-under-file", PATHS["under-a-file"])]


def with_value(base: list[str], opt: dict, value: str | None) -> list[str]:
    if not opt["flags"]:  # a positional: replace by position (build-artifacts SPEC OUTDIR)
        idx = {"spec": 1, "outdir": 2}[opt["dest"]]
        return base[:idx] + [value] + base[idx + 1:]
    flag = opt["flags"][-1] if opt["flags"][-1].startswith("--") else opt["flags"][0]
    argv = list(base)
    for f in opt["flags"]:
        if f in argv:
            i = argv.index(f)
            if value is None:
                return argv
            argv[i + 1] = value
            return argv
    return argv + ([flag] if value is None else [flag, value])


def _fixture(tmp: Path) -> dict[str, str]:
    folder = tmp / "foreign"
    for name in FOREIGN:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"someone else's {name}\n")
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def run_case(argv: list[str], tmp: Path) -> dict:
    before = _fixture(tmp)
    out, err = tmp / ".stdout", tmp / ".stderr"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: the command, in its folder, its output to files
        os.setsid()
        os.chdir(tmp)
        fo, fe = os.open(out, os.O_WRONLY | os.O_CREAT), os.open(err, os.O_WRONLY | os.O_CREAT)
        os.dup2(fo, 1)
        os.dup2(fe, 2)
        code = 70
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code if isinstance(code, int) else 1)
    status = None
    while time.monotonic() - start < LIMIT_S:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        status = None
    wall = round(time.monotonic() - start, 2)
    stderr = err.read_text(errors="replace") if err.exists() else ""
    lines = [line for line in stderr.splitlines() if line.strip()]
    code = None if status is None else os.waitstatus_to_exitcode(status)
    after = {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() if Path(p).is_file() else None for p in before}
    clobbered = sorted(p.replace(str(tmp), "{T}") for p in before if after[p] != before[p])
    errors = [line for line in lines if line.startswith(("fedge: error:", "fedge ")) and "error:" in line]
    if clobbered:
        kind = "clobbered"
    elif "Traceback" in stderr:
        kind = "traceback"
    elif code is None:
        kind = "timeout"
    elif code == 0:
        kind = "accepted"
    elif code in (1, 2, 3) and errors and lines[-1] == errors[-1]:
        kind = "refused"
    else:
        kind = "other"
    tb_last = next((line for line in reversed(lines) if line and not line.startswith(" ")), "") if lines else ""
    return {"command": ["fedge", *argv], "exit": code, "wall_s": wall, "class": kind,
            "stderr_first": lines[0][:300] if lines else "", "stderr_last": tb_last[:300],
            "clobbered": clobbered}


def cases(prefixes: list[str]):
    for command, opts in all_commands().items():
        if prefixes and not any(command.startswith(p) for p in prefixes):
            continue
        base = BASE[command].split(" ")
        yield command, "base", None, base
        for opt in opts:
            for label, value in values(opt):
                yield command, opt["flags"][0] if opt["flags"] else opt["dest"], label, with_value(base, opt, value)


def main_probe(out: str, prefixes: list[str]) -> None:
    results = []
    for command, option, label, argv in cases(prefixes):
        with tempfile.TemporaryDirectory(prefix="fedge-probe-") as tmp:
            result = run_case([a.replace("{T}", tmp) for a in argv], Path(tmp))
            for key in ("stderr_first", "stderr_last"):
                result[key] = result[key].replace(tmp, "{T}")
            result["command"] = [a.replace(tmp, "{T}") for a in result["command"]]
        results.append({"subcommand": command, "option": option, "value": label, **result})
        print(f"{result['class']:10} {result['exit']!s:5} {result['wall_s']:6.2f}s {command} {option}={label!s:12} "
              f"{result['stderr_last'][:150]}", flush=True)
    Path(out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main_probe(sys.argv[1], sys.argv[2:])
