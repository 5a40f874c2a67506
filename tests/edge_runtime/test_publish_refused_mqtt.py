"""A publish the broker refuses (the ACL) is never silent: the transport raises PublishRefused
on the next publish or flush, the device loop logs it and goes on, and the refused update
stays pending until the broker lets it through. Against a real Mosquitto with the fedge ACL."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import make_strategy
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.errors import PublishRefused
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, device_topic
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from fedge.edge_runtime.loop import AgentLoop
from fedge.tools.broker.config import COORDINATOR_USER, BrokerConfig, acl_text
from fedge.tools.broker.passwd import generate_password, upsert_password
from tests.mqtt_fixtures import DEVICES
from tests.tiny_model import CLASSES, FEATURES, build_tiny_model

A, B = DEVICES
FAST = dict(reconnect_min_s=0.1, reconnect_max_s=0.5)


def _wait(what: str, predicate, timeout_s: float = 30.0):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def test_a_refused_publish_raises_publish_refused_on_the_next_publish_and_flush(mosquitto_secured):
    watcher = mosquitto_secured.client(COORDINATOR_USER)
    watcher.subscribe("fedge/v1/devices/+/update")
    settings = MqttSettings(url=mosquitto_secured.process.url, username=B, password=mosquitto_secured.passwords[B],
                            **FAST)
    b = MqttTransport(B, settings).connect()
    try:
        b.publish(device_topic(A, "update"), b"forged")  # accepted by paho; the PUBACK refuses it later
        with pytest.raises(PublishRefused, match=f"devices/{A}/update") as info:
            b.flush()
        assert info.value.reason == "publish_refused" and b.refused_publishes == 1
        assert b.flush() is True  # reported once

        b.publish(device_topic(A, "update"), b"forged again")
        _wait("the second refusal", lambda: b.refused_publishes == 2)
        with pytest.raises(PublishRefused):
            b.publish(device_topic(B, "update"), b"not sent")  # raised before sending anything
        b.publish(device_topic(B, "update"), b"sent")
        assert b.flush() is True
        assert watcher.expect()[1] == b"sent"  # neither forgery, nor the publish that raised
        assert watcher.received() == []
    finally:
        b.close()


def _serve_once(coordinator) -> None:
    """What the coordinator loop does in one pass: handle what came, close the round if done."""
    while coordinator.pump(0.05):
        pass
    coordinator.tick()


def _broker_without_uploads(mosquitto_factory, tmp_path):
    """Passwords for the coordinator and pi-a, and the fedge ACL without the line that lets a
    device publish its updates (an operator revoked uploads); returns (broker, acl, passwords)."""
    passwd, acl = tmp_path / "passwd", tmp_path / "fedge.acl"
    passwords = {user: generate_password() for user in (COORDINATOR_USER, A)}
    for user, password in passwords.items():
        upsert_password(passwd, user, password)
    line = "pattern write fedge/v1/devices/%u/update\n"
    assert line in acl_text()
    acl.write_text(acl_text().replace(line, ""))
    broker = mosquitto_factory(BrokerConfig(password_file=str(passwd), acl_file=str(acl), persistence=False))
    return broker, acl, passwords


def test_the_device_loop_survives_a_refused_update_and_keeps_it_pending(mosquitto_factory, tmp_path, caplog):
    art, manifest, runtime = build_tiny_model(tmp_path / "artifacts")
    broker, acl, passwords = _broker_without_uploads(mosquitto_factory, tmp_path)
    url = broker.url
    cfg = CoordinatorConfig(clients_per_round=1, over_selection=1.0, round_deadline_s=120,
                            hyper=TaskHyper(epochs=1, batch_size=8, lr=0.1), compression=CompressionSpec(quant_bits=32))
    coord_t = MqttTransport(COORDINATOR_USER, MqttSettings(url=url, username=COORDINATOR_USER,
                                                           password=passwords[COORDINATOR_USER], **FAST)).connect()
    coordinator = Coordinator(coord_t, make_strategy("fedavg", cfg.hyper), manifest, runtime.initial("shared"), cfg)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(46, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, size=46)
    device = DeviceRuntime(A, LocalData(x[:40], y[:40], x[40:], y[40:]), {manifest.model_id: art}, tmp_path / "dev")
    dev_t = MqttTransport(A, MqttSettings(url=url, username=A, password=passwords[A], **FAST),
                          will=DeviceAgent.last_will(A)).connect()
    agent = DeviceAgent(device, dev_t, republish_s=0.2, checkin_s=2.0)
    loop = AgentLoop(agent, poll_s=0.05)
    thread = threading.Thread(target=loop.run, daemon=True)
    caplog.set_level(logging.ERROR, logger="fedge.device.loop")
    try:
        coordinator.start()
        thread.start()
        _wait("the check-in", lambda: _serve_once(coordinator) or A in coordinator.eligible_devices())
        assert coordinator.begin_round()

        # The device trains and publishes its update; the broker refuses it; the next publish
        # (a resend) raises PublishRefused, which the loop logs and survives.
        _wait("PublishRefused in the device loop's log",
              lambda: any("PublishRefused" in r.getMessage() and f"devices/{A}/update" in r.getMessage()
                          for r in caplog.records))
        assert thread.is_alive()
        assert len(agent.pending) == 1, "the refused update must stay pending on disk"
        while coordinator.pump(0.0):
            pass
        assert coordinator.round.machine.reported == []

        # The operator restores the ACL: the pending update is resent and counted, once.
        acl.write_text(acl_text())
        broker.reload()
        _wait("the round to commit", lambda: _serve_once(coordinator) or coordinator.history, timeout_s=60)
        _wait("the Ack to clear the pending update", lambda: len(agent.pending) == 0)
        assert coordinator.history[-1].committed and coordinator.history[-1].reports == 1
        assert thread.is_alive()
    finally:
        loop.stop()
        thread.join(timeout=10)
        dev_t.close()
        coord_t.close()
