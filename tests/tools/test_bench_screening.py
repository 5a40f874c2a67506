"""fedge bench screening on small rounds: one JSON document, one row per round size, and the
evaluation count inside what backward elimination can spend."""

from __future__ import annotations

import json

from fedge.tools.bench.screening import main


def test_bench_writes_rows_within_the_elimination_budget(tmp_path):
    out = tmp_path / "screening.json"
    assert main(["--json", str(out), "--inputs", "1,4,6", "--repeats", "1", "--guard-fraction", "0.02"]) == 0
    doc = json.loads(out.read_text())
    assert doc["benchmark"] == "screening" and doc["guard_examples"] == 100 and doc["shared_params"] > 0
    assert [r["inputs"] for r in doc["rows"]] == [1, 4, 6]
    for row in doc["rows"]:
        k = row["inputs"]
        # one pass is k + 1 evaluations (k = 1: none); each drop adds a pass over one fewer
        assert (k + 1 if k > 1 else 0) <= row["evaluations"] <= k * (k + 1) // 2 + k
        assert 0 <= row["dropped"] <= k // 2 and row["seconds"] > 0 and row["clip_only_seconds"] > 0
