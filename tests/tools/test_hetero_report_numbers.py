"""report.md's numbers from hand-made rows (hetero_report.py): the "never" bound is the rounds run
over the IID rounds (the section's own sentence), and the "KiB up/round" column is bytes / 1024."""

from __future__ import annotations

from fedge.tools.bench import hetero_report


def _mult(partition, rounds, iid):
    return {"dataset": "d", "algorithm": "fedavg", "personalization": False, "partition": partition,
            "rounds_to_target": rounds, "iid_rounds_to_target": iid,
            "multiplier": rounds / iid if rounds and iid else None}


def test_a_cell_that_never_reached_the_target_shows_rounds_run_over_iid_rounds():
    doc = {"grid": {"rounds": 50}, "multipliers": [_mult("shards-2", None, 8), _mult("dirichlet-0.1", 12, 8)]}
    text = "\n".join(hetero_report._multiplier_section(doc))
    assert f"never (> {50 / 8:.2f}x)" in text and "never (> 6.25x)" in text and "1.50x" in text


def test_kib_columns_are_bytes_over_1024():
    assert [hetero_report._kib(v) for v in (1024, 51_200, 1536.0, None)] == ["1.0", "50.0", "1.5", "–"]
