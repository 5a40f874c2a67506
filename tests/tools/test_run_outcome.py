"""What a simulation says about itself: the training loss per round (table and run.json),
a run that commits nothing fails loudly, and run.json records what actually ran."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedge.tools.cli import main


def test_train_loss_in_the_table_and_run_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["simulate", "--dataset", "digits", "--devices", "4", "--rounds", "2", "--clients-per-round", "3",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.split()[:2] == ["round", "loss"])
    rows = json.loads(out.read_text())["rounds"]
    for row in rows:
        assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
        line = table[table.index(header) + row["round"]]
        assert line.split()[:2] == [str(row["round"]), f"{row['train_loss']:.4f}"]
    assert rows[1]["train_loss"] < rows[0]["train_loss"] * 1.5  # a sane value, not a sum over steps
