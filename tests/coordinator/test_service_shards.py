"""Sharded ingest as services on a real Mosquitto and PostgreSQL: `fedge coordinator serve` (the
leader, shards = 2), two `--role worker` processes and a standby worker, 20 devices.

Kill -9 the worker of shard 0 mid-round (round 2, while dev-0 of shard 0 is still training):
the standby takes the shard's lease (a new epoch) and its persistent session, the fleet keeps
committing, and every committed model equals, bit for bit, a reference that sums the updates
the store says were counted, per shard in acceptance order in float64, merges the shards in
index order and applies FedAvg's server step. No device is counted twice in a round, and
every round counts every device (min_reports = all). Then kill -9 the leader mid-round 3: the
standby leader (a second `fedge coordinator serve`) resumes the round from the store and the
shard tables, and the fleet commits the rest with the same guarantees.

Without a spare: kill -9 shard 0's worker mid-round 2 and start none. After shard_takeover_s
the leader moves shard 0's uncounted devices (dev-0, still training, at least) to shard 1 and
sends them their task again; each sends the update it made to shard 1 (the same update id);
rounds 3 and 4 assign every device to shard 1; every round counts every device, once, and
every model is bit-exact.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from fedge.coordinator.sharding.config import shard_for
from fedge.coordinator.strategies import ServerState, make_strategy
from fedge.edge_runtime.kernel.protocol import TaskHyper
from tests.coordinator.frozen_kill import kill9_once
from tests.coordinator.shard_reference import reference
from tests.coordinator.test_service_faults import DEVICES as FAULTS_DEVICES
from tests.coordinator.test_service_faults import REPO, Fleet, _wait, drill  # noqa: F401 (a fixture)
from tests.coordinator.test_service_faults import _config as faults_config
from tests.pg_server import import_psycopg

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
psycopg = import_psycopg()
DEVICES, ROUNDS, K = 20, 4, 2
HYPER = TaskHyper(epochs=1, batch_size=8, lr=0.1)


def _config(tmp, url, art_dir, dsn):
    """test_service_faults' service file, for 20 devices, sharded, with its state in PostgreSQL."""
    path = faults_config(tmp, url, art_dir, rounds=ROUNDS)
    text = path.read_text().replace(f" = {FAULTS_DEVICES}\n", f" = {DEVICES}\n")
    state_db = f'state_db = "{tmp / "coordinator.db"}"'
    assert state_db in text and text.count(f" = {DEVICES}\n") == 3
    path.write_text(text.replace(state_db, f'state_dsn = "{dsn}"\nkeep_versions = 10\nshards = {K}\n'
                                           'aggregator = "mean"'))
    return path


def _serve(config, log, *role):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "fedge.tools.cli", "-v", "coordinator", "serve", "--config",
                             str(config), *role], stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _rows(dsn, sql, *args):
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall()
    except psycopg.errors.UndefinedTable:
        return []


def _params(dsn, version):
    rows = _rows(dsn, "SELECT name, dtype, shape, data FROM tensors WHERE version = %s AND kind = 'params'", version)
    return {name: np.frombuffer(bytes(data), dtype).reshape(json.loads(shape)) for name, dtype, shape, data in rows}


def _reference(dsn, round_id, old, version, devices):
    state = ServerState(version, {k: v.copy() for k, v in old.items()})
    return reference(lambda sql, *a: _rows(dsn, sql, *a), K, round_id, state, make_strategy("fedavg", HYPER), devices)


def assert_bit_exact(dsn, devices, every: bool = True) -> int:
    """Every committed round counted each device once (every: all `devices` of the fleet, as the
    round record says), and its model is the oracle's, bit for bit (it needs every version's
    params kept: keep_versions). Returns how many rounds committed."""
    rounds = _rows(dsn, "SELECT round_id, status, record FROM rounds ORDER BY round_id")
    committed = [(r, json.loads(rec)) for r, status, rec in rounds if status == "committed"]
    for version, (round_id, record) in enumerate(committed, 1):
        per_device = _rows(dsn, "SELECT device_id, count(*) FROM shard_updates WHERE round_id = %s "
                                "GROUP BY device_id", round_id)
        assert all(n == 1 for _, n in per_device), (round_id, per_device)
        want, counted = _reference(dsn, round_id, _params(dsn, version - 1), version - 1, devices)
        assert counted == len(per_device) == record["reports"], (round_id, counted, record)  # the sealed count
        assert not every or counted == devices == record["reports"], (round_id, counted, record)
        got = _params(dsn, version)
        for k in want:
            assert np.array_equal(got[k], want[k]), (round_id, k)
    return len(committed)


def stop(procs) -> None:
    """SIGTERM each process still running, then wait (kill after 15 s)."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _kill_shard0_worker_in_round2(procs, logs, dsn, gate: threading.Event) -> None:
    """kill -9 shard 0's worker once round 2 counts 2 updates there but not yet slow dev-0's: the
    assertions on what happened to dev-0's round-2 update need it still out at the kill. The worker
    is frozen for the read (frozen_kill.py), and dev-0 starts its round-2 task only once `gate`
    opens, after the kill: its 3 s alone was no bound on a stalled test (a fresh clone's run at a
    load of 5 on 2 cores counted dev-0's update before the second one, and waited out the 30 s)."""
    try:
        _wait("round 2 to count updates", lambda: _rows(
            dsn, "SELECT count(*) FROM shard_updates WHERE round_id = 2 AND shard = 0")[0][0] >= 2,
            120, procs["leader"], logs["leader"])
        (holder,) = _rows(dsn, "SELECT holder FROM shard_leases WHERE shard = 0")[0]
        victim = next(n for n in ("w1", "w2") if holder.endswith(f":{procs[n].pid}"))
        sql = "SELECT device_id FROM shard_updates WHERE round_id = 2 AND shard = 0"
        kill9_once("round 2 to count 2 updates on shard 0, dev-0's not yet", procs[victim],
                   lambda: [d for (d,) in _rows(dsn, sql)],
                   lambda counted: len(counted) >= 2 and "dev-0" not in counted, 30, logs[victim])
    finally:
        gate.set()  # dev-0 goes on (also when a wait failed: the fleet closes)


def test_worker_then_leader_kill9_mid_round_standbys_take_over_and_every_model_is_bit_exact(drill,  # noqa: F811
                                                                                             postgres_dsn):
    tmp, broker, art_dir, manifest = drill
    config = _config(tmp, broker.url, art_dir, postgres_dsn)
    logs = {name: tmp / f"{name}.log" for name in ("leader", "standby", "w1", "w2", "w3")}
    gate = threading.Event()  # dev-0's round-2 task waits for the worker's kill (_kill_shard0_worker_in_round2)
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={"dev-0": 3.0}, gate=gate,
                  devices=DEVICES)
    procs = {"leader": _serve(config, logs["leader"])}
    started = time.monotonic()
    try:
        _wait("the leader to lead", lambda: _rows(postgres_dsn, "SELECT epoch FROM leader"), 60, procs["leader"],
              logs["leader"])
        procs["standby"] = _serve(config, logs["standby"])
        _wait("a standby leader", lambda: "standby: waiting for leadership" in logs["standby"].read_text(), 60,
              procs["standby"], logs["standby"])
        for name in ("w1", "w2"):
            procs[name] = _serve(config, logs[name], "--role", "worker")
        _wait("both shards held", lambda: len(_rows(postgres_dsn, "SELECT shard FROM shard_leases")) == K, 60)
        procs["w3"] = _serve(config, logs["w3"], "--role", "worker")
        _wait("a standby worker", lambda: "standing by" in logs["w3"].read_text(), 60, procs["w3"], logs["w3"])
        _kill_shard0_worker_in_round2(procs, logs, postgres_dsn, gate)
        killed = time.monotonic()
        _wait("the standby to take shard 0", lambda: _rows(
            postgres_dsn, "SELECT epoch FROM shard_leases WHERE shard = 0")[0][0] == 2, 30, procs["w3"], logs["w3"])
        takeover_s = time.monotonic() - killed
        # Read with the leader frozen (frozen_kill.py): dev-0's 3 s, which keeps round 3 open, is no
        # bound on a stalled test between the read and the kill ("round 3 resumed" below).
        kill9_once("round 3 open and counting updates", procs["leader"], lambda: _rows(
            postgres_dsn, "SELECT count(*) FROM shard_updates u JOIN rounds r USING (round_id) "
                          "WHERE round_id = 3 AND r.status = 'open'")[0][0], lambda counted: counted >= 2,
            120, logs["leader"])
        _wait("the standby to lead", lambda: _rows(postgres_dsn, "SELECT epoch FROM leader")[0][0] == 2, 30,
              procs["standby"], logs["standby"])
        assert procs["standby"].wait(timeout=240) == 0, logs["standby"].read_text()[-3000:]
        elapsed = time.monotonic() - started
    finally:
        gate.set()  # a wait that failed before the kill leaves dev-0 held: let it go before the fleet closes
        stop(procs.values())
        fleet.close()
    assert assert_bit_exact(postgres_dsn, DEVICES) == ROUNDS
    served = logs["w3"].read_text()
    assert "serving shard 0 (epoch 2)" in served, served[-2000:]
    # The standby counted part of round 2 (dev-0, shard 0's slow device, at least), not only rounds 3 and 4.
    on_shard0 = sum(shard_for(f"dev-{i}", K) == 0 for i in range(DEVICES))
    took = int(re.search(r"shard 0 stopped after (\d+) updates", served).group(1))
    assert took > on_shard0 * (ROUNDS - 2), served[-2000:]
    assert "round 3 resumed" in logs["standby"].read_text()
    print(f"shards drill: {ROUNDS} rounds x {DEVICES} devices in {elapsed:.1f} s; shard 0 taken over "
          f"{takeover_s:.2f} s after the kill; the leader killed in round 3, the standby resumed it")


def test_a_worker_killed_with_no_spare_its_devices_move_to_the_live_shard_and_every_model_is_bit_exact(
        drill, postgres_dsn):  # noqa: F811
    tmp, broker, art_dir, manifest = drill
    config = _config(tmp, broker.url, art_dir, postgres_dsn)
    logs = {name: tmp / f"{name}.log" for name in ("leader", "w1", "w2")}
    gate = threading.Event()  # dev-0's round-2 task waits for the worker's kill (_kill_shard0_worker_in_round2)
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={"dev-0": 3.0}, gate=gate,
                  devices=DEVICES)
    procs = {"leader": _serve(config, logs["leader"])}
    started = time.monotonic()
    try:
        _wait("the leader to lead", lambda: _rows(postgres_dsn, "SELECT epoch FROM leader"), 60, procs["leader"],
              logs["leader"])
        for name in ("w1", "w2"):
            procs[name] = _serve(config, logs[name], "--role", "worker")
        _wait("both shards held", lambda: len(_rows(postgres_dsn, "SELECT shard FROM shard_leases")) == K, 60)
        _kill_shard0_worker_in_round2(procs, logs, postgres_dsn, gate)
        assert procs["leader"].wait(timeout=240) == 0, logs["leader"].read_text()[-3000:]
        elapsed = time.monotonic() - started
    finally:
        gate.set()  # a wait that failed before the kill leaves dev-0 held: let it go before the fleet closes
        stop(procs.values())
        fleet.close()
    assert assert_bit_exact(postgres_dsn, DEVICES) == ROUNDS
    moved = _rows(postgres_dsn, "SELECT a.device_id FROM shard_assignment a JOIN shard_updates u USING (round_id, "
                                "device_id) WHERE round_id = 2 AND a.shard = 1 AND u.shard = 1")
    homes0 = {f"dev-{i}" for i in range(DEVICES) if shard_for(f"dev-{i}", K) == 0}
    assert "dev-0" in homes0 and ("dev-0",) in moved, moved  # the slow one: it trained once, its update moved
    assert "device(s) moved to shard(s) [1]" in logs["leader"].read_text()
    assert _rows(postgres_dsn, "SELECT DISTINCT shard FROM shard_assignment WHERE round_id > 2") == [(1,)]
    print(f"no-spare drill: {ROUNDS} rounds x {DEVICES} devices in {elapsed:.1f} s; "
          f"{len([d for (d,) in moved if d in homes0])} device(s) of shard 0 moved in round 2")
