"""The heterogeneity grid's own checks at their documented limits, and which jobs it builds for
the pretrained rows (hetero_grid.py: HeteroGrid.__post_init__, build_jobs)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fedge.tools.bench.hetero_grid import HeteroGrid, build_jobs
from tests.tools.test_heterogeneity import TINY


def test_the_least_grid_is_accepted_and_one_less_is_refused():
    least = {"devices": 2, "rounds": 1, "compression_rounds": 1, "workers": 1}
    HeteroGrid(**least)  # "need rounds >= 1, compression_rounds >= 1, devices >= 2, workers >= 1"
    for name in least:
        with pytest.raises(ValueError, match="devices >= 2"):
            HeteroGrid(**{**least, name: least[name] - 1})


def test_an_unknown_pretrained_compression_setting_is_refused_before_the_grid_runs():
    with pytest.raises(ValueError, match="unknown grid entries.*int2"):
        HeteroGrid(pretrained_compression=("dense-fp32", "int2"))


def test_the_pretrained_compression_rows_run_with_error_feedback():
    grid = replace(TINY, datasets=("mnist5k",), pretrained_compression=("dense-fp32", "int8-top1%"))
    pre = [j for j in build_jobs(grid, pretrained_model="pre/model.toml")
           if j.kind == "compression" and j.labels.get("backbone") == "pretrained"]
    assert [j.labels["setting"] for j in pre] == ["dense-fp32", "int8-top1%"]
    assert all(j.labels["error_feedback"] is True and j.cfg.coordinator.compression.error_feedback for j in pre)
