"""The real coordinator over a real, secured Mosquitto, attacked by MQTT clients fedge did not
write (raw paho, MQTT 5 and 3.1.1, each logged in as its own device): every bad message is
refused by name, logged and exported, the coordinator keeps serving, and the honest devices'
round commits to the weighted mean of their deltas (the oracle)."""

from __future__ import annotations

import logging

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from fedge.coordinator.server import Coordinator
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Ack, CheckIn, FetchRequest, Status, TrainTask, device_topic
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
    for d in fleet.devices:
        d.inbox = [m for m in d.inbox if not isinstance(m, (TrainTask, Ack))]
    if c.round is None:
        assert c.begin_round()
    await_tasks(fleet.devices)
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


def test_retained_messages_replayed_at_a_restart_are_refused_by_name_but_not_a_retained_status(
        secured, tmp_path, caplog):
    """A device may leave a retained message on its own topics, and the broker replays it at every
    subscription: each coordinator restart (and reconnect) handled a retained check-in, update or
    fetch request as if it had just been sent. The live copy is handled; the replay is refused as
    `retained`. A retained Status (the Last Will) is the protocol's own, and is not refused."""
    fleet = start_fleet(secured, tmp_path)
    c, broker = fleet.coordinator, fleet.broker
    try:
        pi_c = broker.raw("pi-c", mqtt.MQTTv5)
        pi_d = broker.raw("pi-d", mqtt.MQTTv311, will=(device_topic("pi-d", "status"),
                                                       encode_message(Status("pi-d", False, "link lost"))))
        away = [CheckIn(d, eligible=False, reason="battery_low") for d in ("pi-c", "pi-d")]  # not picked to train
        fetch = FetchRequest("pi-d", fleet.manifest.model_id)
        retained = [(pi_c, device_topic("pi-c", "checkin"), encode_message(away[0])),
                    (pi_c, device_topic("pi-c", "update"), b"not a frame"),
                    (pi_d, device_topic("pi-d", "checkin"), encode_message(away[1])),
                    (pi_d, device_topic("pi-d", "fetch"), encode_message(fetch))]
        for client, topic, payload in retained:
            client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
        pump_until(c, lambda: len(c.registry) == 4 and sum(c.rejections.values()) == 2)
        assert c.rejections == {"malformed": 1, "artifact_unavailable": 1}  # the live copies, handled as sent
        broker.drop(pi_d)  # its Last Will: a retained Status(offline)
        pump_until(c, lambda: c.registry["pi-d"].reason == "offline")
        _commit_honest_round(fleet, copy_params(c.state.params), np.random.default_rng(2))

        c.transport.close()  # a restart: a new process on the same store subscribes again
        c = fleet.coordinator = Coordinator(broker.connect("coordinator"), strategy_from_config(fleet.config),
                                            fleet.manifest, fleet.runtime.initial("shared"), fleet.config,
                                            store=RoundStore(tmp_path / "state.db"))
        caplog.set_level(logging.WARNING, logger="fedge.coordinator")
        c.start()
        # A live sentinel after the replays, which the broker sent on this link as it granted each
        # subscription; when it is in, they are all queued.
        pi_c.publish(device_topic("pi-c", "checkin"), b"", qos=1).wait_for_publish(5)
        pump_until(c, lambda: c.rejections["truncated"] == 1)
        while c.pump(0.0):
            pass
        assert c.rejections == {"retained": len(retained), "truncated": 1}
        assert exported_rejections(c) == {"retained": len(retained), "truncated": 1}
        for _, topic, _ in retained:
            assert any(topic in r.getMessage() and "retained" in r.getMessage() for r in caplog.records), topic
        _commit_honest_round(fleet, copy_params(c.state.params), np.random.default_rng(3))
        assert c.rejections == {"retained": len(retained), "truncated": 1}  # the Status replay was not refused
    finally:
        broker.close()
