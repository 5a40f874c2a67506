"""Plant each mutant of mutants.py in turn (an exact, unique text replacement), run its tests
(`-x -q -m "not slow"`), record caught or missed, and put the file back by copying its pristine
copy (never git). Run from the repository root:

    python benchmarks/results/2026-12-06-mutation4-rounds/plant.py before.json  # all, their module's tests
    python benchmarks/results/2026-12-06-mutation4-rounds/plant.py after.json --after  # the missed, new tests
    python benchmarks/results/2026-12-06-mutation4-rounds/plant.py x.json rd-quorum-gt sp-ceil-floor  # these

Each file's pristine copy is taken before its first mutant, under a temporary folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mutants import AFTER, GROUPS, MUTANTS  # noqa: E402


def main(out: Path, after: bool, only: set[str]) -> None:
    results = json.loads(out.read_text()) if out.exists() else {}
    pristine = Path(tempfile.mkdtemp(prefix="mutation4-rounds-"))
    for mid, path, old, new, group in MUTANTS:
        if (after and mid not in AFTER) or (only and mid not in only):
            continue
        tests = (AFTER[mid] if after else GROUPS[group]).split()
        f, saved = Path(path), pristine / path
        saved.parent.mkdir(parents=True, exist_ok=True)
        if not saved.exists():
            shutil.copy(f, saved)
        src = saved.read_text()
        assert src.count(old) == 1, (mid, src.count(old))
        f.write_text(src.replace(old, new))
        start = time.time()
        try:
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *tests],
                capture_output=True,
                text=True,
                timeout=400,
            )
            rc, lines = run.returncode, run.stdout.splitlines()
        except subprocess.TimeoutExpired:
            rc, lines = "timeout", []
        finally:
            shutil.copy(saved, f)
        results[mid] = {
            "rc": rc,
            "caught": rc not in (0, 5, "timeout"),
            "tail": lines[-1:],
            "failed": [line for line in lines if line.startswith("FAILED")][:1],
            "s": round(time.time() - start),
        }
        out.write_text(json.dumps(results, indent=1))
        print(mid, results[mid], flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), "--after" in sys.argv[2:], {a for a in sys.argv[2:] if a != "--after"})
