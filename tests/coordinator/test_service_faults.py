"""Fault drills against the real service: `fedge coordinator serve` in its own process, device
agents on real MQTT connections, a real Mosquitto. Kill -9 the coordinator mid-round, or the
broker, and check from the coordinator's SQLite file that nothing committed was lost and no
update was counted twice. Then one drill step by step: an update the broker PUBACKed and lost."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.edge_runtime.loop import AgentLoop
from fedge.tools.broker import BrokerConfig, MosquittoProcess
from tests.coordinator.frozen_kill import kill9_once
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
DEVICES = 6


class SlowRuntime(DeviceRuntime):
    """A device that takes `delay_s` longer per task, so a round stays open long enough to be hit;
    with a `gate`, it starts tasks of round `gate_from_round` and later only once the gate opens."""

    delay_s = 0.0
    gate: threading.Event | None = None
    gate_from_round = 2

    def handle_task(self, task, deadline_check=None, journal=None):
        if self.gate is not None and task.round_id >= self.gate_from_round:
            self.gate.wait(300)  # the tests open it (and in their finally); 60 s could run out first under load
        reply = super().handle_task(task, deadline_check, journal)
        time.sleep(self.delay_s)
        return reply


class CountingAgent(DeviceAgent):
    """Counts updates published again (resent), and those resent after `since` is set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.resent = 0
        self.since = threading.Event()
        self.resent_since = 0

    def republish_pending(self) -> int:
        n = len(self.pending)  # counted before publishing: a failed publish is a resend attempt too
        self.resent += n
        if self.since.is_set():
            self.resent_since += n
        return super().republish_pending()


class Fleet:
    def __init__(self, url: str, art_dir: Path, model_id: str, root: Path, slow: dict[str, float],
                 gate: threading.Event | None = None, devices: int = DEVICES):
        rng = np.random.default_rng(0)
        settings = MqttSettings(url=url, session_expiry_s=600, reconnect_min_s=0.2, reconnect_max_s=1.0)
        self.loops, self.agents, self.threads = [], [], []
        for i in range(devices):
            device_id = f"dev-{i}"
            x = rng.normal(size=(46, FEATURES)).astype(np.float32)
            y = rng.integers(0, CLASSES, size=46)
            runtime = SlowRuntime(device_id, LocalData(x[:40], y[:40], x[40:], y[40:]), {model_id: art_dir}, root)
            runtime.delay_s = slow.get(device_id, 0.0)
            runtime.gate = gate if device_id in slow else None
            transport = MqttTransport(device_id, settings, will=DeviceAgent.last_will(device_id))
            transport.connect(timeout=0)
            agent = CountingAgent(runtime, transport, republish_s=1.0, checkin_s=2.0)
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
    return subprocess.Popen([sys.executable, "-m", "fedge.tools.cli", "-v", "coordinator", "serve", "--config",
                             str(config)],
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
        # Round 1 commits; round 2 is open with some updates stored (and acked): kill -9 now, as read
        # with the service frozen (frozen_kill.py: dev-5's 3 s is no bound on a stalled test).
        rows = kill9_once("round 1 to commit and round 2 to hold updates", proc, lambda: _rounds(db),
                          lambda rows: len(_committed(rows)) >= 1 and _open_round_updates(db) >= 2, 90, log)
        before = _committed(rows)
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
    # Two devices hold their round-2 answers until the broker is dead, so they are certain to
    # finish during the outage and have to resend once the broker is back.
    gate = threading.Event()
    fleet = Fleet(broker.url, art_dir, manifest.model_id, tmp / "devices", slow={"dev-4": 0.0, "dev-5": 0.0},
                  gate=gate)
    slow = [a for a in fleet.agents if a.device_id in ("dev-4", "dev-5")]
    proc = _serve(config, log)
    try:
        _wait("round 1 to commit and round 2 to hold updates",
              lambda: len(_committed(_rounds(db))) >= 1 and _open_round_updates(db) >= 1, 90, proc, log)
        hit = [r for r in _rounds(db) if r[1] == "open"][0][0]
        assert hit == 2
        broker.kill9()
        for agent in fleet.agents:
            agent.since.set()
        gate.set()  # the two slow devices finish while the broker is down
        _wait("the slow devices' updates to be pending", lambda: all(len(a.pending) for a in slow), 60)
        broker.restart()
        back = time.time()
        assert proc.wait(timeout=240) == 0, log.read_text()[-3000:]
        # The device threads may still be handling the last Acks when the service exits; a resend that reaches
        # the broker after the service exited is never acked (asserted below: it must be one the store counted).
        try:
            _wait("every update acknowledged", lambda: all(len(a.pending) == 0 for a in fleet.agents), 30)
        except AssertionError:
            pass
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
    # Its devices are alive: the open round resumes them and commits soon after the broker is
    # back (issue 9: within 10 s), not at its deadline.
    closed = _query(db, f"SELECT closed_wall, deadline_wall FROM rounds WHERE round_id = {int(hit)}")[0]
    print(f"kill9: committed {closed[0] - back:.2f} s after the broker returned")
    assert closed[0] - back <= 10.0 and closed[0] < closed[1], (closed[0] - back, closed)
    _assert_no_double_counting(db, rows)
    # Nothing lost: every update still pending on a device is one the coordinator stored and counted.
    counted = {(device_id, update_id) for device_id, _, update_id in _keys(db)}
    left = [(a.device_id, item.update_id) for a in fleet.agents for item in a.pending.items()]
    assert all(key in counted for key in left), (left, sorted(counted))
    assert all(a.resent_since >= 1 for a in slow), [a.resent_since for a in slow]  # they resent after the outage


class PublishLog(MqttTransport):
    """An MqttTransport that remembers when it published what (monotonic time, topic, payload)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.log: list[tuple[float, str, bytes]] = []

    def publish(self, topic, payload, *, qos=1, retain=False):
        super().publish(topic, payload, qos=qos, retain=retain)
        self.log.append((time.monotonic(), topic, bytes(payload)))


def test_an_update_the_broker_acked_and_lost_is_resent_by_the_device_and_counted_once(drill):
    """Step by step, nothing left to timing: the coordinator is offline (its persistent session
    keeps its subscriptions), the device publishes its update and the broker PUBACKs it, queued
    for the coordinator; the broker is killed with -9 (no persistence: the queue is gone) and
    restarted; the coordinator comes back. Only the device's own resend (no Ack yet) can bring
    the update in, and it is counted exactly once."""
    from fedge.coordinator.config import CoordinatorConfig
    from fedge.coordinator.server import Coordinator
    from fedge.coordinator.store import RoundStore
    from fedge.coordinator.strategies import make_strategy
    from fedge.edge_runtime.kernel.codec import decode_message
    from fedge.edge_runtime.kernel.protocol import TaskHyper, Update, device_topic

    tmp, broker, art_dir, manifest = drill
    db = tmp / "coordinator.db"
    cfg = CoordinatorConfig(clients_per_round=1, over_selection=1.0, round_deadline_s=300,
                            hyper=TaskHyper(epochs=1, batch_size=8, lr=0.1))
    settings = MqttSettings(url=broker.url, session_expiry_s=600, reconnect_min_s=0.2, reconnect_max_s=1.0)
    _, _, model = build_tiny_model(tmp / "coordinator-artifacts")

    started: list[Coordinator] = []

    def coordinator() -> Coordinator:
        transport = MqttTransport("coordinator", settings).connect()
        started.append(Coordinator(transport, make_strategy("fedavg", cfg.hyper), manifest, model.initial("shared"),
                                   cfg, store=RoundStore(db)))
        started[-1].start()
        return started[-1]

    def serve(c: Coordinator, until, what: str, timeout_s: float = 60.0):
        deadline = time.monotonic() + timeout_s
        while not until():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            while c.pump(0.05):
                pass
            c.tick()

    may_train = threading.Event()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(46, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, size=46)
    runtime = SlowRuntime("dev-0", LocalData(x[:40], y[:40], x[40:], y[40:]), {manifest.model_id: art_dir},
                          tmp / "devices")
    runtime.gate, runtime.gate_from_round = may_train, 1
    device_t = PublishLog("dev-0", settings, will=DeviceAgent.last_will("dev-0")).connect()
    agent = CountingAgent(runtime, device_t, republish_s=1.0, checkin_s=2.0)
    loop = AgentLoop(agent, poll_s=0.05)
    thread = threading.Thread(target=loop.run, daemon=True)
    first = coordinator()
    # No timed resend before the kill: a test thread stalled over 1 s between the publish and the
    # PUBACK check below would see a resend (resent == 1) that the test did not ask for. After
    # the kill the base interval is back; the reconnect brings the next resend within it.
    agent.uplink.republish_s = 3600.0
    try:
        thread.start()
        serve(first, lambda: first.eligible_devices() == ["dev-0"], "the check-in")
        first.begin_round()  # round 1: the device holds its answer until the gate opens
        first.transport.flush(30)
        tasks_sent = time.monotonic()
        _wait("the device to take the task", lambda: agent.tasks, 30)
        first.transport.close()  # offline; its session (and subscriptions) stay in the broker

        may_train.set()
        _wait("the update to be written and published", lambda: len(agent.pending) == 1 and any(
            t == device_topic("dev-0", "update") for _, t, _ in device_t.log), 60)
        (pending,) = agent.pending.items()
        assert device_t.flush(30), "no PUBACK: the broker must hold the update for the offline coordinator"
        assert agent.resent == 0  # so far, published once
        assert first.round.machine.reported == []  # the coordinator never saw it

        broker.kill9()  # the queued update dies with the broker (no persistence)
        killed = time.monotonic()
        agent.since.set()
        agent.uplink.republish_s = 1.0
        broker.restart()
        second = coordinator()  # the same store: round 1 resumes, its task is sent again
        back = time.monotonic()
        serve(second, lambda: second.history, "the round to commit")
        _wait("the Ack", lambda: len(agent.pending) == 0, 30)
    finally:
        loop.stop()
        thread.join(timeout=10)
        device_t.close()
        for c in started:
            c.transport.close()

    record = second.history[-1]
    assert record.committed and record.reports == 1
    assert _keys(db) == [("dev-0", 1, pending.update_id)]  # counted once: the update trained before the kill
    # getattr: after the commit the device may already have answered the evaluation (an
    # EvalReport, on the same topic, has no update_id)
    sends = [when for when, topic, payload in device_t.log if topic == device_topic("dev-0", "update")
             and getattr(decode_message(payload), "update_id", None) == pending.update_id]
    assert isinstance(decode_message(pending.payload), Update)
    assert sends[0] > tasks_sent and sends[0] < killed  # first published (and PUBACKed) before the kill
    assert any(when > back for when in sends[1:]), "the update that came in must be a resend after the restart"
    assert agent.resent_since >= 1
