"""Mutation audits: plant each mutant of a folder's mutants.py in turn (an exact, unique text
replacement in a source file), run the tests that should notice (`-x -q -m "not slow"`), record
caught or missed, and put the file back by copying its pristine copy (never git). The folders
under benchmarks/results/*-mutation*/ hold the mutants, the runs and a README each; their
plant.py calls this. Run from the repository root:

    python benchmarks/results/FOLDER/plant.py before.json          # every mutant, its group's tests
    python benchmarks/results/FOLDER/plant.py after.json --after   # the missed ones, the new tests only
    python benchmarks/results/FOLDER/plant.py x.json ID ID ...      # only these mutants

mutants.py defines MUTANTS [(id, path, old, new, group)], GROUPS {group: "test files"} and AFTER
{id: "test files"}. Each file's pristine copy is taken before its first mutant, under a
temporary folder; a mutant whose `old` text is not found exactly once stops the run.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MISSED_CODES = (0, 5, "timeout")  # pytest passed, or collected no test, or never finished


def load_mutants(folder: Path):
    """(MUTANTS, GROUPS, AFTER) from folder/mutants.py."""
    spec = importlib.util.spec_from_file_location(f"mutants_{folder.name.replace('-', '_')}", folder / "mutants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MUTANTS, module.GROUPS, getattr(module, "AFTER", {})


def run_tests(tests: list[str], timeout_s: float = 400) -> tuple[int | str, list[str]]:
    try:
        run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                              *tests], capture_output=True, text=True, timeout=timeout_s)
        return run.returncode, run.stdout.splitlines()
    except subprocess.TimeoutExpired:
        return "timeout", []


def plant(folder: Path, out: Path, after: bool = False, only: frozenset[str] = frozenset()) -> dict:
    mutants, groups, after_tests = load_mutants(folder)
    results = json.loads(out.read_text()) if out.exists() else {}
    pristine = Path(tempfile.mkdtemp(prefix=f"{folder.name}-"))
    for mid, path, old, new, group in mutants:
        if (after and mid not in after_tests) or (only and mid not in only):
            continue
        tests = (after_tests[mid] if after else groups[group]).split()
        f, saved = Path(path), pristine / path
        saved.parent.mkdir(parents=True, exist_ok=True)
        if not saved.exists():
            shutil.copy(f, saved)
        src = saved.read_text()
        if src.count(old) != 1:
            raise SystemExit(f"{mid}: the text to replace occurs {src.count(old)} times in {path}, not once")
        f.write_text(src.replace(old, new))
        start = time.time()
        try:
            rc, lines = run_tests(tests)
        finally:
            shutil.copy(saved, f)
        results[mid] = {"rc": rc, "caught": rc not in MISSED_CODES, "tail": lines[-1:],
                        "failed": [line for line in lines if line.startswith("FAILED")][:1],
                        "s": round(time.time() - start)}
        out.write_text(json.dumps(results, indent=1))
        print(mid, results[mid], flush=True)
    return results


def main(folder: Path, argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    plant(folder, Path(argv[0]), "--after" in argv[1:], frozenset(a for a in argv[1:] if a != "--after"))
