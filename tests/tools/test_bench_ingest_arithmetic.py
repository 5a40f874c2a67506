"""`fedge bench ingest`'s arithmetic on hand-made timings, against the module docstring read as a
plain loop: rates from the median run (updates / drain seconds, bytes / path seconds), the drain
ratio coordinator / raw paho, seconds per stage on the stage's own clock readings, durable
writes counted between the first and last snapshot. The measuring loops are replaced by fakes
(the mosquitto test, test_bench_ingest.py, runs them for real)."""

from __future__ import annotations

import statistics
from collections import Counter
from types import SimpleNamespace

import pytest

from fedge.tools.bench import device_writes, ingest, ingest_path
from fedge.tools.bench.ingest_drain import prepare

MESSAGES = [(f"t/{i}", b"x" * (100 + i)) for i in range(5)]  # 510 bytes in all


class _Broker:
    port, url = 1, "mqtt://127.0.0.1:1"

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_drain_rates_come_from_the_median_run_and_the_ratio_is_coordinator_over_raw(monkeypatch):
    raw, coord = [1.0, 4.0, 2.0], [4.0, 10.0, 5.0]  # medians 2 and 5; means differ; bests 1 and 4
    raw_left, coord_left = list(raw), list(coord)
    fake = SimpleNamespace(round=SimpleNamespace(ctx=None), config=SimpleNamespace(max_update_bytes=0))
    monkeypatch.setattr("fedge.tools.broker.MosquittoProcess", _Broker)
    monkeypatch.setattr(ingest, "prepare", lambda *a, **k: (fake, MESSAGES))
    monkeypatch.setattr(ingest, "measure", lambda *a: {"aggregate_bytes_per_second": 7.0})
    monkeypatch.setattr(ingest, "raw_drain", lambda *a: raw_left.pop(0))
    monkeypatch.setattr(ingest, "coordinator_drain", lambda *a: coord_left.pop(0))
    monkeypatch.setattr(ingest, "shards_on_ejabberd", lambda *a: {"skipped": "not asked"})
    out = ingest.run(devices=100, repeats=3, writes=False, timeout_s=1.0)
    raw_rate, coord_rate = 100 / sorted(raw)[1], 100 / sorted(coord)[1]  # 50 and 20 updates a second
    assert out["raw_paho_updates_per_second"] == raw_rate == 50.0
    assert out["coordinator_updates_per_second"] == coord_rate == 20.0
    assert out["coordinator_updates_per_second_best"] == 25.0 and out["raw_paho_updates_per_second_best"] == 100.0
    assert out["drain_ratio"] == round(coord_rate / raw_rate, 3) == 0.4  # below the 0.5 target: not met
    assert out["update_bytes"] == 100 and out["aggregate_bytes_per_second"] == 7


def test_path_rates_use_the_median_run_and_leave_out_a_stage_that_took_no_time(monkeypatch):
    walls, cpus = [1.0, 4.0, 2.0], [3.0, 1.0, 2.0]

    def path_seconds(messages, ctx, max_bytes, clock=None):
        return (cpus if clock is ingest_path.time.thread_time else walls).pop(0)

    stage = dict.fromkeys(ingest_path.STAGES, 0.5) | {"digest": 0.0}
    monkeypatch.setattr(ingest_path, "path_seconds", path_seconds)
    monkeypatch.setattr(ingest_path, "stage_seconds", lambda *a, **k: dict(stage))
    monkeypatch.setattr(ingest_path, "np_add_seconds", lambda *a, **k: (0.25, 1000))
    out = ingest_path.measure(MESSAGES, None, 0, repeats=3)
    total = sum(len(p) for _, p in MESSAGES)
    assert out["aggregate_bytes_per_second"] == total / statistics.median([1.0, 4.0, 2.0]) == 255.0
    assert out["aggregate_bytes_per_second_best"] == total / 1.0
    assert out["aggregate_bytes_per_cpu_second"] == total / 2.0 and out["np_add_bytes_per_second"] == 4000.0
    assert out["stages_bytes_per_second"] == {s: 1020 for s in ingest_path.STAGES if s != "digest"}


def test_each_stage_is_charged_its_own_clock_readings(tmp_path):
    """The clock is read six times a message (t0..t5); stage i is t(i+1) - t(i). A clock whose
    steps all differ (n**2 at its n-th reading) tells every stage apart."""
    coordinator, messages = prepare(tmp_path, devices=3, params=8, quant_bits=8, seed=0)
    try:
        readings = iter(range(10**6))
        spent = ingest_path.stage_seconds(messages, coordinator.round.ctx, coordinator.config.max_update_bytes,
                                          clock=lambda: next(readings) ** 2)
    finally:
        coordinator.store.close()
    expected = dict.fromkeys(ingest_path.STAGES, 0.0)
    for j in range(len(messages)):
        for i, name in enumerate(ingest_path.STAGES):
            n = 6 * j + i
            expected[name] += (n + 1) ** 2 - n ** 2
    assert spent == expected


def test_durable_writes_per_task_are_those_between_the_snapshots():
    before = Counter({"journal": 3, "state": 2, "model": 1})
    after = Counter({"journal": 11, "state": 2, "model": 1, "update": 4})
    row = device_writes._per_task(before, after, 4)
    by_file = {k: (after[k] - before[k]) / 4 for k in after if after[k] > before[k]}  # kinds that grew
    assert row == {"per_task": sum(by_file.values()), "by_file": by_file, "tasks": 4}
    assert row["per_task"] == pytest.approx(3.0)
