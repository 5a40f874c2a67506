"""The scale-out drill on the two-node ejabberd cluster: a leader and a standby, two workers and
a standby worker (all on node 1), and 200 lightweight devices (light_fleet.py: one MQTT session
each, half of them on node 2). Mid-round, kill -9 in turn the worker of shard 0, the leader,
and node 2: the standby worker takes the shard, the standby leader resumes the round, node 2's
devices fail over and check in again, and the fleet keeps committing. Every committed model
equals, bit for bit, the shard oracle, and no device is counted twice in a round. Its own
module: it kills a node of the module's cluster."""

from __future__ import annotations

import signal
import time

import pytest

from tests.coordinator.light_fleet import LightDevice, LightFleet
from tests.coordinator.test_service_faults import DEVICES as FAULTS_DEVICES
from tests.coordinator.test_service_faults import _config, _wait
from tests.coordinator.test_service_shards import _rows, _serve, assert_bit_exact, stop
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

pytestmark = [pytest.mark.slow]
import_psycopg()
K, DEVICES = 2, 200
EJABBERD_SHARDS = K  # the devices' upload grants (tests/ejabberd_cluster.py)


def _commits(dsn) -> int:
    return len(_rows(dsn, "SELECT round_id FROM rounds WHERE status = 'committed'"))


def _counted_in_open_round(dsn, shard) -> int:
    return _rows(dsn, "SELECT count(*) FROM shard_updates u JOIN rounds r USING (round_id) "
                      "WHERE r.status = 'open' AND u.shard = %s", shard)[0][0]


def test_200_devices_survive_a_worker_the_leader_and_a_broker_node_killed(ejabberd_cluster, postgres_dsn, tmp_path):
    cluster = ejabberd_cluster
    art_dir, manifest, _ = build_tiny_model(tmp_path / "artifacts")
    shapes = {p.name: p.shape for p in manifest.by_role("shared")}
    ids = [f"lite-{i:03d}" for i in range(DEVICES)]
    cluster.register_many(ids)
    config = _config(tmp_path, cluster.nodes[0].url, art_dir, rounds=0)
    text = config.read_text().replace(f" = {FAULTS_DEVICES}\n", f" = {DEVICES}\n")
    text = text.replace(f"min_reports = {DEVICES}\n", "min_reports = 150\n").replace("round_deadline_s = 60",
                                                                                      "round_deadline_s = 20")
    text = text.replace(f'url = "{cluster.nodes[0].url}"',
                        f'url = "{cluster.nodes[0].url}"\nfallback_urls = ["{cluster.nodes[1].url}"]\n'
                        f'username = "coordinator"\npassword = "{cluster.passwords["coordinator"]}"')
    state_db = f'state_db = "{tmp_path / "coordinator.db"}"'
    config.write_text(text.replace(state_db, f'state_dsn = "{postgres_dsn}"\nkeep_versions = 1000\nshards = {K}\n'
                                             'aggregator = "mean"'))
    logs = {n: tmp_path / f"{n}.log" for n in ("leader", "standby", "w1", "w2", "w3")}
    fleet = LightFleet([LightDevice(d, cluster.settings(d, node=i % 2, session_expiry_s=600, reconnect_min_s=0.2,
                                                        reconnect_max_s=1.0), shapes, i) for i, d in enumerate(ids)])
    procs = {"leader": _serve(config, logs["leader"])}
    marks = {}
    started = time.monotonic()
    try:
        _wait("the leader", lambda: _rows(postgres_dsn, "SELECT epoch FROM leader"), 60, procs["leader"],
              logs["leader"])
        procs["standby"] = _serve(config, logs["standby"])
        for name in ("w1", "w2"):
            procs[name] = _serve(config, logs[name], "--role", "worker")
        _wait("both shards held", lambda: len(_rows(postgres_dsn, "SELECT shard FROM shard_leases")) == K, 60)
        procs["w3"] = _serve(config, logs["w3"], "--role", "worker")
        try:
            _wait("a first commit", lambda: _commits(postgres_dsn) >= 1, 180, procs["leader"], logs["leader"])
        except AssertionError as exc:  # the leader waits for all 200: say which devices it never heard
            raise AssertionError(f"{exc}\n{fleet.stragglers()}") from None
        marks["first commit"] = time.monotonic() - started

        _wait("shard 0 counting", lambda: _counted_in_open_round(postgres_dsn, 0) >= 5, 60)
        (holder,) = _rows(postgres_dsn, "SELECT holder FROM shard_leases WHERE shard = 0")[0]
        victim = next(n for n in ("w1", "w2") if holder.endswith(f":{procs[n].pid}"))
        procs[victim].send_signal(signal.SIGKILL)
        _wait("the standby worker on shard 0", lambda: _rows(
            postgres_dsn, "SELECT epoch FROM shard_leases WHERE shard = 0")[0][0] == 2, 30, procs["w3"], logs["w3"])
        before = _commits(postgres_dsn)
        _wait("a commit after the worker kill", lambda: _commits(postgres_dsn) > before, 120)
        marks["worker killed"] = time.monotonic() - started

        _wait("shard 1 counting", lambda: _counted_in_open_round(postgres_dsn, 1) >= 5, 60)
        procs["leader"].send_signal(signal.SIGKILL)
        _wait("the standby leader", lambda: _rows(postgres_dsn, "SELECT epoch FROM leader")[0][0] == 2, 30,
              procs["standby"], logs["standby"])
        before = _commits(postgres_dsn)
        _wait("a commit after the leader kill", lambda: _commits(postgres_dsn) > before, 120, procs["standby"],
              logs["standby"])
        marks["leader killed"] = time.monotonic() - started

        cluster.kill(1)
        before = _commits(postgres_dsn)
        _wait("2 commits after node 2 died", lambda: _commits(postgres_dsn) >= before + 2, 180, procs["standby"],
              logs["standby"])
        marks["node 2 killed"] = time.monotonic() - started
    finally:
        stop(procs.values())
        fleet.close()
    assert "serving shard 0 (epoch 2)" in logs["w3"].read_text()
    assert " resumed: " in logs["standby"].read_text()  # the leader died with a round open
    committed = assert_bit_exact(postgres_dsn, DEVICES, every=False)
    full = _rows(postgres_dsn, "SELECT count(*) FROM (SELECT round_id FROM shard_updates GROUP BY round_id "
                               "HAVING count(*) = %s) AS r", DEVICES)[0][0]
    print(f"200-device drill: {committed} commits ({full} with all {DEVICES} devices); "
          + ", ".join(f"{k} at {v:.0f} s" for k, v in marks.items()))
