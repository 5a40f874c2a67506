"""Sharded ingest on the two-node ejabberd cluster: the leader and two `--role worker` processes
on node 1 (logged in as "coordinator"), six real devices split across both nodes uploading to
their shard topics (the cluster's access rules grant fedge/v1/shard/k/devices/%u/update, k < K). Node 2
is killed with -9 after two commits: its devices fail over to node 1, check in again, and the
fleet keeps committing; every committed model equals, bit for bit, the shard oracle
(shard_reference.py), and no device is counted twice in a round. Its own module: it kills a
node of the module's cluster."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from fedge.tools.broker.process import free_port
from tests.coordinator.test_service_ejabberd import _start_devices, stop_devices
from tests.coordinator.test_service_faults import DEVICES, _config, _wait
from tests.coordinator.test_service_shards import _rows, _serve, assert_bit_exact, stop
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

pytestmark = [pytest.mark.slow]
import_psycopg()
K = 2
EJABBERD_SHARDS = K  # the devices' upload grants (tests/ejabberd_cluster.py)


def _commits(dsn) -> int:
    return len(_rows(dsn, "SELECT round_id FROM rounds WHERE status = 'committed'"))


def test_sharded_fleet_on_two_ejabberd_nodes_survives_losing_one(ejabberd_cluster, postgres_dsn, tmp_path):
    cluster = ejabberd_cluster
    art_dir, manifest, _ = build_tiny_model(tmp_path / "artifacts")
    config = _config(tmp_path, cluster.nodes[0].url, art_dir, rounds=0)
    port = free_port()  # the leader's; worker k serves metrics_port + 1 + k
    state_db = f'state_db = "{tmp_path / "coordinator.db"}"'
    text = config.read_text().replace(
        f'url = "{cluster.nodes[0].url}"',
        f'url = "{cluster.nodes[0].url}"\nfallback_urls = ["{cluster.nodes[1].url}"]\nusername = "coordinator"\n'
        f'password = "{cluster.passwords["coordinator"]}"')
    config.write_text(text.replace(state_db, f'state_dsn = "{postgres_dsn}"\nkeep_versions = 100\nshards = {K}\n'
                                             f'aggregator = "mean"\nmodel_part_bytes = 4096\nmetrics_port = {port}'))
    logs = {n: tmp_path / f"{n}.log" for n in ("leader", "w1", "w2")}
    loops, agents, threads = _start_devices(cluster, art_dir, manifest.model_id, tmp_path / "devices")
    procs = {"leader": _serve(config, logs["leader"])}
    try:
        _wait("the leader to lead", lambda: _rows(postgres_dsn, "SELECT epoch FROM leader"), 60, procs["leader"],
              logs["leader"])
        for name in ("w1", "w2"):
            procs[name] = _serve(config, logs[name], "--role", "worker")
        # A round begun while one worker is still starting goes wholly to the live shard (its
        # devices move), so count 2 commits from when both serve: the second of them began with both.
        _wait("both workers serving their shard", lambda: all(
            logs[n].exists() and "serving shard" in logs[n].read_text() for n in ("w1", "w2")), 60, procs["leader"],
              logs["leader"])
        served = _commits(postgres_dsn)
        _wait("2 commits on the whole cluster", lambda: _commits(postgres_dsn) >= served + 2, 120, procs["leader"],
              logs["leader"])
        before = _commits(postgres_dsn)
        for shard in range(K):  # each worker's own endpoint counts what it accepted
            text = urllib.request.urlopen(f"http://127.0.0.1:{port + 1 + shard}/metrics", timeout=10).read().decode()
            assert float(re.search(r"^fedge_updates_accepted_total (\S+)$", text, re.M).group(1)) > 0, text[:2000]
        cluster.kill(1)
        killed = time.monotonic()
        _wait("2 more commits after node 2 died", lambda: _commits(postgres_dsn) >= before + 2, 120,
              procs["leader"], logs["leader"])
        after_kill = time.monotonic() - killed
    finally:
        stop(procs.values())
        stop_devices(loops, threads, agents)
    committed = assert_bit_exact(postgres_dsn, DEVICES)
    assert committed >= before + 2
    print(f"sharded on ejabberd: {committed} commits; 2 more {after_kill:.1f} s after node 2 was killed")
