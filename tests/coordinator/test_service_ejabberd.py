"""`fedge coordinator serve` on a two-node ejabberd cluster: the coordinator on node 1, six real
devices split across both nodes, rounds that commit; then node 2 is killed with -9 mid-run, its
devices fail over to node 1 and check in again, and the fleet keeps committing.

Every round needs all six reports (min_reports = 6), so a commit after the kill proves that
the devices of the lost node are back in the fleet. Model parts travel as retained messages
and the devices wait up to 120 s for them before asking for their task inline: rounds that
commit in seconds show the parts reached devices on node 2, which only the coordinator's
retained fan-out (coordinator/retain_fanout.py) puts there. This module holds one test, so
the cluster it kills is its own."""

from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest

from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import LocalData
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.loop import AgentLoop
from tests.coordinator.test_service_faults import (
    DEVICES,
    SlowRuntime,
    _assert_no_double_counting,
    _committed,
    _config,
    _rounds,
    _serve,
    _wait,
)
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model

pytestmark = [pytest.mark.slow]


def _start_devices(cluster, art_dir, model_id, root):
    rng = np.random.default_rng(0)
    loops, agents, threads = [], [], []
    for i in range(DEVICES):
        device_id = f"dev-{i}"
        cluster.register(device_id)
        x = rng.normal(size=(46, FEATURES)).astype(np.float32)
        y = rng.integers(0, CLASSES, size=46)
        runtime = SlowRuntime(device_id, LocalData(x[:40], y[:40], x[40:], y[40:]), {model_id: art_dir}, root)
        runtime.delay_s = 0.3  # a round stays open a little, so the kill can land inside one
        settings = cluster.settings(device_id, node=i % 2, session_expiry_s=600, reconnect_min_s=0.2,
                                    reconnect_max_s=1.0)
        transport = MqttTransport(device_id, settings, will=DeviceAgent.last_will(device_id))
        transport.connect(timeout=0)
        agent = DeviceAgent(runtime, transport, republish_s=1.0, checkin_s=5.0, model_wait_s=120.0)
        loop = AgentLoop(agent, poll_s=0.05)
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        loops.append(loop)
        agents.append(agent)
        threads.append(thread)
    return loops, agents, threads


def stop_devices(loops, threads, agents) -> None:
    for loop in loops:
        loop.stop()
    for thread in threads:
        thread.join(timeout=5)
    for agent in agents:
        agent.transport.close()


def test_fleet_on_two_ejabberd_nodes_survives_losing_one(ejabberd_cluster, tmp_path):
    cluster = ejabberd_cluster
    art_dir, manifest, _ = build_tiny_model(tmp_path / "artifacts")
    config = _config(tmp_path, cluster.nodes[0].url, art_dir, rounds=0)
    text = config.read_text().replace(
        f'url = "{cluster.nodes[0].url}"',
        f'url = "{cluster.nodes[0].url}"\nfallback_urls = ["{cluster.nodes[1].url}"]\nusername = "coordinator"\n'
        f'password = "{cluster.passwords["coordinator"]}"')
    config.write_text(text.replace("[coordinator]\n", "[coordinator]\nmodel_part_bytes = 4096\n", 1))
    db, log = tmp_path / "coordinator.db", tmp_path / "service.log"
    loops, agents, threads = _start_devices(cluster, art_dir, manifest.model_id, tmp_path / "devices")
    proc = _serve(config, log)
    started = time.monotonic()
    try:
        _wait("2 commits on the whole cluster", lambda: len(_committed(_rounds(db))) >= 2, 90, proc, log)
        before = len(_committed(_rounds(db)))
        on_node2 = [a for a in agents if f":{cluster.nodes[1].port}" in repr(a.transport)]
        assert len(on_node2) == DEVICES // 2, [repr(a.transport) for a in agents]
        killed_at = time.monotonic()
        cluster.kill(1)
        _wait("2 more commits after node 2 died", lambda: len(_committed(_rounds(db))) >= before + 2, 90, proc, log)
        after_kill = time.monotonic() - killed_at
        for agent in on_node2:  # failed over to node 1, and checked in again there
            assert f":{cluster.nodes[0].port}" in repr(agent.transport), repr(agent.transport)
            assert agent.transport.connection_count >= 2
        rows = _rounds(db)
        _assert_no_double_counting(db, rows)
        print(f"{len(_committed(rows))} commits in {time.monotonic() - started:.1f} s; 2 more "
              f"{after_kill:.1f} s after the kill")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except Exception:
            proc.kill()
        stop_devices(loops, threads, agents)
