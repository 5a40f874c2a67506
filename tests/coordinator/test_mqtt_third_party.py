"""The real coordinator over a real, secured Mosquitto, attacked by MQTT clients fedge did not
write (raw paho, MQTT 5 and 3.1.1, each logged in as its own device): every bad message is
refused by name, logged and exported, the coordinator keeps serving, and the honest devices'
round commits to the weighted mean of their deltas (the oracle)."""

from __future__ import annotations

import logging

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import device_topic
from tests.coordinator.fleet import assert_params, copy_params, fedavg_oracle, random_delta
from tests.coordinator.mqtt_attackers import (
    await_tasks,
    exported_rejections,
    pump_until,
    queued,
    secured_broker,
    start_fleet,
    wait_for,
)

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def secured(mosquitto_factory, tmp_path):
    return secured_broker(mosquitto_factory, tmp_path)


def _commit_honest_round(fleet, old, rng) -> None:
    """The honest devices answer their tasks; the round commits to the oracle's model."""
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in old.items()}
    good = [d.update(random_delta(shapes, rng), update_id=f"good-{d.id}") for d in fleet.devices]
    for device, update in zip(fleet.devices, good):
        device.send(encode_message(update))
    pump_until(c, lambda: len(c.round.machine.reported) == len(good))
    record = c.tick()
    assert record.committed and record.reports == len(good)
    assert_params(c.state.params, fedavg_oracle(old, good))
    wait_for(lambda: all(d.acks() for d in fleet.devices), "the honest devices' Acks")
    assert [a for d in fleet.devices for a in d.acks()] == [(True, "")] * len(good)


def test_empty_payloads_queued_together_are_each_refused_as_truncated(secured, tmp_path, caplog):
    """Two empty payloads from one device, waiting together in the coordinator's inbound queue,
    once raised KeyError out of pump(): the service logged a traceback and lost the message
    instead of refusing it by name."""
    fleet = start_fleet(secured, tmp_path)
    c, broker = fleet.coordinator, fleet.broker
    try:
        old = copy_params(c.state.params)
        assert c.begin_round()
        await_tasks(fleet.devices)
        attackers = {"pi-c": broker.raw("pi-c", mqtt.MQTTv5), "pi-d": broker.raw("pi-d", mqtt.MQTTv311)}
        sent = 0
        for user, client in attackers.items():
            for channel in ("checkin", "update", "fetch"):
                for _ in range(2):
                    client.publish(device_topic(user, channel), b"", qos=1).wait_for_publish(5)
                    sent += 1
        topics = [device_topic(user, "checkin") for user in attackers]
        wait_for(lambda: sum(queued(c.transport, t) for t in topics) == sent, "the empty payloads to queue up")
        caplog.set_level(logging.WARNING, logger="fedge.coordinator")
        pump_until(c, lambda: sum(c.rejections.values()) == sent)
        assert c.rejections == {"truncated": sent}
        assert exported_rejections(c) == {"truncated": sent}
        logged = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
        assert any("pi-c" in line for line in logged) and any("pi-d" in line for line in logged)
        _commit_honest_round(fleet, old, np.random.default_rng(1))
    finally:
        broker.close()
