"""The two messages that used to kill `fedge coordinator serve` (a check-in, and an update for
the device's own task, each claiming 2**63 examples), sent over a real Mosquitto to the real
service process: it stays up, counts both as `malformed` on /metrics, and then commits the
round from the device's genuine update and exits cleanly at its round count."""

from __future__ import annotations

import sqlite3
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    Ack,
    Announcement,
    CheckIn,
    TrainTask,
    Update,
    device_topic,
)
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.tools.broker.process import free_port
from tests.coordinator.hostile import CODES, as_map, raw_frame
from tests.coordinator.test_service_faults import _serve, _wait
from tests.tiny_model import build_tiny_model

pytestmark = [pytest.mark.mosquitto]


def _config(tmp: Path, url: str, art_dir: Path, metrics_port: int) -> Path:
    path = tmp / "coordinator.toml"
    path.write_text(f"""
[broker]
url = "{url}"

[service]
min_devices = 1
rounds = 1

[coordinator]
artifacts_dir = "{art_dir}"
state_db = "{tmp / 'coordinator.db'}"
metrics_port = {metrics_port}
clients_per_round = 1
over_selection = 1.0
round_deadline_s = 120

[coordinator.evaluation]
every_rounds = 0   # the hand-driven device never evaluates; the service would wait for it before exiting
""")
    return path


def _rejections(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("fedge_rejections_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def _next(device: MqttTransport, kind: type, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        msg = device.receive(0.2)
        if msg is not None and msg.payload:
            decoded = decode_message(msg.payload)
            if isinstance(decoded, kind):
                return decoded
    raise AssertionError(f"no {kind.__name__} within {timeout_s} s")


def test_the_crash_messages_do_not_stop_the_service(tmp_path, mosquitto):
    art_dir, manifest, _ = build_tiny_model(tmp_path / "artifacts")
    port = free_port()
    log = tmp_path / "service.log"
    proc = _serve(_config(tmp_path, mosquitto.url, art_dir, port), log)
    device = MqttTransport("dev-x", MqttSettings(url=mosquitto.url)).connect()
    try:
        for channel in ("task", "ack"):
            device.subscribe(device_topic("dev-x", channel))
        device.subscribe(ANNOUNCE_TOPIC)
        _next(device, Announcement, 60)  # published after the coordinator subscribed: it hears us now
        _wait("the metrics endpoint", lambda: _try(_rejections, port) is not None, 60, proc, log)
        checkin = as_map(CheckIn("dev-x", num_examples=5))
        device.publish(device_topic("dev-x", "checkin"), raw_frame(CODES[CheckIn], {**checkin, "num_examples": 2**63}))
        _wait("the check-in refused", lambda: _rejections(port).get("malformed") == 1, 30, proc, log)
        assert proc.poll() is None, log.read_text()[-3000:]

        device.publish(device_topic("dev-x", "checkin"), encode_message(CheckIn("dev-x", num_examples=5)))
        task = _next(device, TrainTask)
        shapes = {p.name: p.shape for p in manifest.by_role("shared")}
        update = Update("dev-x", task.round_id, task.task_id, "u1", task.model_id, task.model_version, 5,
                        encode_dense({k: np.zeros(s, np.float32) for k, s in shapes.items()}))
        crash = raw_frame(CODES[Update], {**as_map(update), "num_examples": 2**63})
        device.publish(device_topic("dev-x", "update"), crash)
        _wait("the update refused", lambda: _rejections(port).get("malformed") == 2, 30, proc, log)
        assert proc.poll() is None, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()

        device.publish(device_topic("dev-x", "update"), encode_message(update))
        ack = _next(device, Ack)
        assert (ack.accepted, ack.reason) == (True, "")
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]  # [service] rounds = 1: done
        with sqlite3.connect(tmp_path / "coordinator.db") as db:
            rows = db.execute("SELECT round_id, status FROM rounds").fetchall()
            devices = db.execute("SELECT device_id, num_examples FROM devices").fetchall()
        assert rows == [(1, "committed")] and devices == [("dev-x", 5)]
    finally:
        device.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _try(fn, *args):
    try:
        return fn(*args)
    except OSError:
        return None
