"""`fedge bench scale`'s figures on hand-made inputs: VmHWM's kB are KiB (proc(5)), and a size
is within the target at exactly 2 GB (the docstring: peak_rss_bytes <= target_peak_rss_bytes)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from fedge.tools.bench import scale
from fedge.tools.bench.scale import TARGET_PEAK_RSS_BYTES, ScaleGrid


class _Status:
    def __init__(self, _path):
        pass

    def read_text(self):
        return "Name:\tpython\nVmPeak:\t  9999 kB\nVmHWM:\t    1000 kB\nVmRSS:\t  500 kB\n"


def test_peak_rss_reads_vmhwm_in_kib(monkeypatch):
    monkeypatch.setattr(scale, "Path", _Status)
    assert scale.peak_rss_bytes() == 1000 * 1024


def _worker_says(monkeypatch, peak: int) -> None:
    row = {"simulation_seconds": 1.0, "cpu_seconds": 1.0, "rounds_committed": 1, "global_accuracy": 0.5,
           "personalized_accuracy_mean": 0.5, "peak_rss_bytes": peak}
    monkeypatch.setattr(scale.subprocess, "run",
                        lambda *a, **k: SimpleNamespace(returncode=0, stdout="log line\n" + json.dumps(row), stderr=""))


def test_within_target_holds_at_exactly_the_target_and_not_a_byte_past(monkeypatch):
    grid = ScaleGrid(sizes=(10,))
    _worker_says(monkeypatch, TARGET_PEAK_RSS_BYTES)
    assert scale.measure(grid, 10)["within_target"] is True
    _worker_says(monkeypatch, TARGET_PEAK_RSS_BYTES + 1)
    assert scale.measure(grid, 10)["within_target"] is False
