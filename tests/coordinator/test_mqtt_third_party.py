"""The real coordinator over a real, secured Mosquitto, attacked by MQTT clients fedge did not
write (raw paho, MQTT 5 and 3.1.1, each logged in as its own device): every bad message is
refused by name, logged and exported, the coordinator keeps serving, and the honest devices'
round commits to the weighted mean of their deltas (the oracle)."""

from __future__ import annotations

import logging

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from fedge.coordinator.server import Coordinator
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    Ack,
    CheckIn,
    FetchRequest,
    Status,
    TrainTask,
    device_topic,
)
from fedge.tools.broker.config import MAX_PACKET_SIZE
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
from tests.coordinator.rawmqtt import RawMqtt, publish_packet

pytestmark = pytest.mark.mosquitto


@pytest.fixture
def secured(mosquitto_factory, tmp_path):
    return secured_broker(mosquitto_factory, tmp_path)


def _judged_up_to_a_sentinel(c, client: mqtt.Client, user: str) -> dict[str, int]:
    """The coordinator's rejections once it has judged everything that reached its link before
    an empty payload `client` sends now (refused as truncated), checked against /metrics."""
    client.publish(device_topic(user, "checkin"), b"", qos=1).wait_for_publish(5)
    pump_until(c, lambda: c.rejections["truncated"] == 1)
    while c.pump(0.0):
        pass
    assert exported_rejections(c) == c.rejections
    return c.rejections


def _commit_honest_round(fleet, old, rng) -> None:
    """The honest devices answer their tasks; the round commits to the oracle's model."""
    c = fleet.coordinator
    if c.round is None:  # a new round: the devices' last tasks and Acks are history
        for d in fleet.devices:
            d.inbox = [m for m in d.inbox if not isinstance(m, (TrainTask, Ack))]
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
        # The broker sent the replays on this link as it granted each subscription, before the sentinel.
        assert _judged_up_to_a_sentinel(c, pi_c, "pi-c") == {"retained": len(retained), "truncated": 1}
        for _, topic, _ in retained:
            assert any(topic in r.getMessage() and "retained" in r.getMessage() for r in caplog.records), topic
        _commit_honest_round(fleet, copy_params(c.state.params), np.random.default_rng(3))
        assert c.rejections == {"retained": len(retained), "truncated": 1}  # the Status replay was not refused
    finally:
        broker.close()


PUBACK = 0x40  # the first byte of a QoS 1 PUBACK packet
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code 135


def test_forged_replayed_oversized_and_eavesdropping_clients_during_a_round(secured, tmp_path):
    """During a round: pi-c, on MQTT 5, listens on `#`, replays pi-a's update at QoS 2 on its
    own topic and tries it on pi-a's (the ACL refuses); pi-d, on 3.1.1 from a bare socket, sends
    a PUBLISH as large as the broker takes and then one past it. The coordinator refuses what
    reaches it by name, pi-c hears nothing of pi-a's or pi-b's, and the round commits."""
    fleet = start_fleet(secured, tmp_path)
    c, broker = fleet.coordinator, fleet.broker
    try:
        old = copy_params(c.state.params)
        assert c.begin_round()
        await_tasks(fleet.devices)
        pi_c = broker.raw("pi-c", mqtt.MQTTv5)
        heard, pubacks = [], {}
        pi_c.on_message = lambda _c, _u, m: heard.append(m.topic)
        pi_c.on_publish = lambda _c, _u, mid, rc, _p: pubacks.__setitem__(mid, rc.value)
        pi_c.subscribe("#", qos=2)
        pi_a = fleet.devices[0]
        stolen = pi_a.update(random_delta({k: v.shape for k, v in old.items()}, np.random.default_rng(5)),
                             update_id="good-pi-a")
        pi_c.publish(device_topic("pi-c", "update"), encode_message(stolen), qos=2).wait_for_publish(5)
        forged = pi_c.publish(device_topic("pi-a", "update"), encode_message(stolen), qos=1)
        forged.wait_for_publish(5)
        assert pubacks[forged.mid] == NOT_AUTHORIZED

        host, port = secured.process.host, secured.process.port
        pi_d = RawMqtt(host, port, "pi-d", secured.passwords["pi-d"])
        pi_d.send(publish_packet(device_topic("pi-d", "update"), MAX_PACKET_SIZE))  # max_packet_size: taken
        assert pi_d.read()[0] == PUBACK
        # Past the limit however it is counted (Mosquitto 2.0 leaves out the length bytes, up to 3
        # here): the broker cuts the link and forwards nothing.
        with pytest.raises(ConnectionError):
            pi_d.send(publish_packet(device_topic("pi-d", "update"), MAX_PACKET_SIZE + 16))
            pi_d.read()
        pi_d.close()

        pump_until(c, lambda: sum(c.rejections.values()) == 2)
        _commit_honest_round(fleet, old, np.random.default_rng(6))
        assert c.rejections == {"stale_round": 1, "malformed": 1}  # the replay (another device's), the big one
        assert pi_c.is_connected() and [a for d in fleet.devices for a in d.acks()] == [(True, "")] * 2
        mine = {device_topic("pi-c", k) for k in ("task", "ack", "artifact")} | {ANNOUNCE_TOPIC}
        assert set(heard) <= mine and ANNOUNCE_TOPIC in heard
    finally:
        broker.close()


def test_a_storm_of_a_hundred_connects_knocks_no_one_off_and_every_will_is_refused_by_name(secured, tmp_path):
    """100 connects in about a second: wrong passwords under the honest devices' and the
    coordinator's client ids, anonymous ones, unknown users with unicode and very long names
    and client ids, and pi-c logging in 25 times (asking for the client ids of pi-a and of the
    coordinator too: the broker gives it its username), each session with a garbage Last Will
    that its successor's takeover publishes. No honest link drops, each will is refused
    as malformed, and the round commits."""
    fleet = start_fleet(secured, tmp_path)
    c, broker = fleet.coordinator, fleet.broker
    host, port = secured.process.host, secured.process.port
    storm: list[mqtt.Client] = []
    answers: dict[int, list[int]] = {}
    try:
        old = copy_params(c.state.params)
        assert c.begin_round()
        await_tasks(fleet.devices)
        for i in range(100):
            kind = i % 4
            user, client_id = [("pi-a", "pi-a"), (None, "coordinator"), ("ü" * 300, "x" * 5000),
                               ("pi-c", ("", "pi-a", "coordinator")[i % 3])][kind]
            password = secured.passwords["pi-c"] if kind == 3 else "wrong"
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                 protocol=mqtt.MQTTv5 if i % 2 else mqtt.MQTTv311)
            if user is not None:
                client.username_pw_set(user, password)
            if kind == 3:
                client.will_set(device_topic("pi-c", "status"), b"garbage will %d" % i, qos=1, retain=True)
            client.on_connect = lambda _c, _u, _f, rc, _p, i=i: answers.setdefault(i, []).append(rc.value)
            client.connect(host, port, keepalive=30)
            storm.append(client)

        def step() -> bool:  # paho driven by hand: no thread, and no reconnect after a takeover
            for client in storm:
                client.loop(timeout=0.0)
            return len(answers) == len(storm)
        wait_for(step, "a CONNACK for every connect")
        accepted = sorted(i for i, codes in answers.items() if codes == [0])
        assert accepted == list(range(3, 100, 4))  # pi-c's; the rest refused
        # pi-c once more, with no will: its takeover publishes the last storm session's will
        # before this session's sentinel, so when the sentinel is in, every will is.
        sentinel = broker.raw("pi-c", mqtt.MQTTv5)
        assert _judged_up_to_a_sentinel(c, sentinel, "pi-c") == {"malformed": len(accepted), "truncated": 1}
        links = [c.transport, *(d.t for d in fleet.devices)]
        assert [(t.connected, t.connection_count) for t in links] == [(True, 1)] * len(links)
        _commit_honest_round(fleet, old, np.random.default_rng(7))
    finally:
        for client in storm:
            sock = client.socket()
            if sock is not None:
                sock.close()
        broker.close()
