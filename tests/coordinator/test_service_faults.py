"""Fault drills against the real service: `fedge coordinator serve` in its own process, device
agents on real MQTT connections, a real Mosquitto. Kill -9 the coordinator mid-round, or the
broker, and check from the coordinator's SQLite file that nothing committed was lost and no
update was counted twice."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.agent import DeviceAgent
from edge_runtime.device import DeviceRuntime, LocalData
from edge_runtime.loop import AgentLoop
from edge_runtime.transport.mqtt import MqttSettings, MqttTransport
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model
from tools.broker import BrokerConfig, MosquittoProcess

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
DEVICES = 6


class SlowRuntime(DeviceRuntime):
    """A device that takes `delay_s` longer per task, so a round stays open long enough to be hit."""

    delay_s = 0.0

    def handle_task(self, task, deadline_check=None):
        reply = super().handle_task(task, deadline_check)
        time.sleep(self.delay_s)
        return reply


class Fleet:
    def __init__(self, url: str, art_dir: Path, model_id: str, root: Path, slow: dict[str, float]):
        rng = np.random.default_rng(0)
        settings = MqttSettings(url=url, session_expiry_s=600, reconnect_min_s=0.2, reconnect_max_s=1.0)
        self.loops, self.agents, self.threads = [], [], []
        for i in range(DEVICES):
            device_id = f"dev-{i}"
            x = rng.normal(size=(46, FEATURES)).astype(np.float32)
            y = rng.integers(0, CLASSES, size=46)
            runtime = SlowRuntime(device_id, LocalData(x[:40], y[:40], x[40:], y[40:]), {model_id: art_dir}, root)
            runtime.delay_s = slow.get(device_id, 0.0)
            transport = MqttTransport(device_id, settings, will=DeviceAgent.last_will(device_id))
            transport.connect(timeout=0)
            agent = DeviceAgent(runtime, transport, republish_s=1.0, checkin_s=2.0)
            loop = AgentLoop(agent, poll_s=0.05)
            thread = threading.Thread(target=loop.run, daemon=True)
            thread.start()
            self.loops.append(loop)
            self.agents.append(agent)
            self.threads.append(thread)

    def close(self) -> None:
        for loop in self.loops:
            loop.stop()
        for thread in self.threads:
            thread.join(timeout=5)
        for agent in self.agents:
            agent.transport.close()


def _config(tmp: Path, url: str, art_dir: Path, rounds: int) -> Path:
    path = tmp / "coordinator.toml"
    path.write_text(f"""
[broker]
url = "{url}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[service]
min_devices = {DEVICES}
rounds = {rounds}

[coordinator]
artifacts_dir = "{art_dir}"
state_db = "{tmp / 'coordinator.db'}"
clients_per_round = {DEVICES}
over_selection = 1.0
min_reports = {DEVICES}
round_deadline_s = 60
task_resend_s = 1.0

[coordinator.hyper]
epochs = 1
batch_size = 8
lr = 0.1

[coordinator.compression]
quant_bits = 8
""")
    return path


def _serve(config: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tools.cli", "-v", "coordinator", "serve", "--config", str(config)],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, cwd=REPO)


def _query(db: Path, sql: str) -> list:
    """Rows, or [] while the service has not created its schema yet."""
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []


def _rounds(db: Path) -> list[tuple[int, str, dict]]:
    rows = _query(db, "SELECT round_id, status, record FROM rounds ORDER BY round_id")
    return [(r, s, json.loads(rec) if rec else {}) for r, s, rec in rows]


def _open_round_updates(db: Path) -> int:
    rows = _query(db, "SELECT COUNT(*) FROM updates u JOIN rounds r USING (round_id) WHERE r.status = 'open'")
    return int(rows[0][0]) if rows else 0


def _keys(db: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(db, timeout=5) as conn:
        return conn.execute("SELECT device_id, round_id, update_id FROM updates").fetchall()


def _wait(what, predicate, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None and proc.returncode != 0:
            break
        time.sleep(0.05)
    tail = log.read_text()[-3000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{tail}")


@pytest.fixture
def drill(tmp_path, mosquitto_binary):
    art_dir, manifest, _ = build_tiny_model(tmp_path / "artifacts")
    broker = MosquittoProcess(BrokerConfig(persistence=False), workdir=tmp_path / "broker").start()
    yield tmp_path, broker, art_dir, manifest
    broker.close()


def _committed(rows):
    return [r for r in rows if r[1] == "committed"]


def _assert_no_double_counting(db: Path, rows) -> None:
    keys = _keys(db)
    per_round: dict[int, list[str]] = {}
    for device_id, round_id, _ in keys:
        per_round.setdefault(round_id, []).append(device_id)
    for round_id, status, record in rows:
        if status == "committed":
            devices = per_round.get(round_id, [])
            assert len(devices) == len(set(devices)) == record["reports"], (round_id, devices, record)


def test_coordinator_kill9_mid_round_loses_nothing_and_training_continues(drill):
    tmp, broker, art_dir, manifest = drill
    db, log = tmp / "coordinator.db", tmp / "coordinator.log"
    config = _config(tmp, broker.url, art_dir, rounds=4)
    # One slow device keeps each round open for ~3 s after the others have reported.
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={"dev-5": 3.0})
    proc = _serve(config, log)
    try:
        # Round 1 commits; round 2 is open with some updates stored (and acked): kill -9 now.
        _wait("round 1 to commit and round 2 to hold updates",
              lambda: len(_committed(_rounds(db))) >= 1 and _open_round_updates(db) >= 2, 90, proc, log)
        before = _committed(_rounds(db))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        open_rounds = [r for r in _rounds(db) if r[1] == "open"]
        assert len(open_rounds) == 1

        proc = _serve(config, log)
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        fleet.close()
    rows = _rounds(db)
    committed = _committed(rows)
    assert [r[0] for r in committed][: len(before)] == [r[0] for r in before]  # 0 committed rounds lost
    assert len(committed) == 4  # training continued to the configured rounds
    assert open_rounds[0][0] in [r[0] for r in committed]  # the interrupted round resumed and committed
    assert all(r[2]["reports"] == DEVICES for r in committed)
    _assert_no_double_counting(db, rows)
    assert "resum" in log.read_text().lower()


def test_broker_kill9_mid_round_loses_no_update(drill):
    tmp, broker, art_dir, manifest = drill
    db, log = tmp / "coordinator.db", tmp / "coordinator.log"
    config = _config(tmp, broker.url, art_dir, rounds=3)
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={"dev-4": 2.0, "dev-5": 2.0})
    proc = _serve(config, log)
    try:
        _wait("round 1 to commit and round 2 to hold updates",
              lambda: len(_committed(_rounds(db))) >= 1 and _open_round_updates(db) >= 1, 90, proc, log)
        hit = [r for r in _rounds(db) if r[1] == "open"][0][0]
        broker.kill9()  # the two slow devices finish while the broker is down
        time.sleep(2.5)
        broker.restart()
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
        # The device threads may still be handling the last Acks when the service exits.
        _wait("every update acknowledged", lambda: all(len(a.pending) == 0 for a in fleet.agents), 30)
    finally:
        if proc.poll() is None:
            proc.kill()
        fleet.close()
    rows = _rounds(db)
    committed = _committed(rows)
    assert len(committed) == 3
    hit_round = [r for r in rows if r[0] == hit][0]
    # Over-selection 1.0 and min_reports = all: the round commits only with every update.
    assert hit_round[1] == "committed" and hit_round[2]["reports"] == DEVICES
    _assert_no_double_counting(db, rows)
    assert all(len(a.pending) == 0 for a in fleet.agents)  # every update was acknowledged
