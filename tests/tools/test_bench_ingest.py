"""`fedge bench ingest` on a tiny backlog: both drains happen (the coordinator's round commits
with every update, or the bench raises), and the JSON has the keys issue 14 names."""

from __future__ import annotations

import json
import os

import pytest

from fedge.tools.bench import ingest as bench

pytestmark = [pytest.mark.mosquitto]

KEYS = ("update_bytes", "coordinator_updates_per_second", "raw_paho_updates_per_second",
        "aggregate_bytes_per_second", "np_add_bytes_per_second", "stages", "durable_writes_per_task")


def test_a_tiny_run_writes_the_issue_keys(mosquitto_binary, tmp_path):
    out = tmp_path / "ingest.json"
    result = bench.run(devices=12, update_kb=4, repeats=1, json_path=str(out), timeout_s=60)
    assert json.loads(out.read_text()) == result
    assert all(key in result for key in KEYS)
    assert result["update_bytes"] > 4 * 1024  # the payload plus the message's envelope
    assert result["coordinator_drain_seconds_runs"][0] > 0 and result["raw_paho_drain_seconds_runs"][0] > 0
    assert set(result["stages"]) == {"frame_checks", "digest", "dequantize", "finite_and_norm", "accumulate"}
    assert all(seconds > 0 for seconds in result["stages"].values())
    # fsync'd writes per task (tests/edge_runtime/test_durable_writes.py says which, and why)
    assert result["durable_writes_per_task"] == 2 and result["durable_writes_per_task_replay"] == 1


def test_workers_drain_the_backlog_on_shard_topics(mosquitto_binary, postgres_dsn):
    from tests.pg_server import import_psycopg

    import_psycopg()
    result = bench.run(devices=40, update_kb=4, repeats=1, timeout_s=120, writes=False, workers=(1, 2),
                       dsn=postgres_dsn)
    rates = result["workers_updates_per_second"]
    assert set(rates) == {"1", "2"} and all(r > 0 for r in rates.values())
    assert all(key in result for key in KEYS) and result["durable_writes_per_task"] is None  # --no-writes: null
    ejabberd = result["workers_ejabberd_2_nodes"]
    if "skipped" not in ejabberd or os.environ.get("FEDGE_REQUIRE_EJABBERD") == "1":
        assert set(ejabberd["updates_per_second"]) == {"1", "2"}, ejabberd
    print("bench ingest --workers 1,2 (40 updates of 4 KiB):", rates, "on ejabberd:", ejabberd, "coordinator:",
          result["coordinator_updates_per_second"])
