"""The async coordinator (FedBuff) over a real, secured Mosquitto (passwords, the shipped ACL),
attacked by a device client fedge did not write (raw paho, MQTT 5) with messages valid in form
but wrong in state, claims at the edges of their ranges, a check-in storm, QoS 0 and 2 and a
retained check-in, and replays after a coordinator restart. Each bad message is refused by
name, in the rejection metric; the device's own update with the largest example count the wire
allows counts once, and the buffer flushes to a plain loop of FedBuff's step (the oracle). The
sync coordinator meets the same attacks in test_mqtt_third_party.py and test_phase_fuzz_mqtt.py."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.async_mode.server import AsyncCoordinator
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import MAX_EXAMPLES, Ack, CheckIn, Decline, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.coordinator.fleet import assert_params, copy_params, random_delta
from tests.coordinator.hostile import as_map, raw_frame
from tests.coordinator.mqtt_attackers import await_tasks, exported_rejections, pump_until, start_fleet, wait_for
from tests.coordinator.mqtt_attackers import secured_broker as secured_mosquitto
from tests.coordinator.test_async_server import fedbuff_oracle

pytestmark = pytest.mark.mosquitto
STORM = 200
UPDATE = 3  # the wire's type code of an Update


def _judged(c, expected: Counter) -> None:
    """Pump until the coordinator has refused what `expected` says (more would show up later as a
    mismatch), then check the counts it exports."""
    pump_until(c, lambda: sum(c.rejections.values()) >= sum(expected.values()))
    while c.pump(0.0):
        pass
    assert c.rejections == expected
    assert exported_rejections(c) == expected


def test_state_and_range_attacks_on_an_async_buffer_through_a_secured_broker(mosquitto_factory, tmp_path):
    secured = secured_mosquitto(mosquitto_factory, tmp_path)
    fleet = start_fleet(secured, tmp_path, mode="async", checkin_refill_s=3600.0,  # no refill during the storm
                        async_=AsyncConfig(concurrency=3, buffer_size=3, max_staleness=2))
    c, broker = fleet.coordinator, fleet.broker
    assert isinstance(c, AsyncCoordinator)
    try:
        pi_c = broker.raw("pi-c", mqtt.MQTTv5)
        heard: list = []
        pi_c.on_message = lambda _c, _u, msg: heard.append(decode_message(msg.payload))
        for channel in ("task", "ack"):
            pi_c.subscribe(device_topic("pi-c", channel), qos=1)
        # a retained check-in at QoS 2: handled as it comes, refused as `retained` when replayed
        checkin = encode_message(CheckIn("pi-c", num_examples=MAX_EXAMPLES))
        pi_c.publish(device_topic("pi-c", "checkin"), checkin, qos=2, retain=True).wait_for_publish(5)
        pump_until(c, lambda: "pi-c" in c.registry)
        assert c.begin_round()
        c.tick()  # dispatch: pi-a, pi-b and pi-c in flight
        await_tasks(fleet.devices)
        wait_for(lambda: any(isinstance(m, TrainTask) for m in heard), "pi-c's task")
        task = next(m for m in heard if isinstance(m, TrainTask))
        a_task = fleet.devices[0].task()
        old = copy_params(c.state.params)
        shapes = {k: v.shape for k, v in old.items()}
        rng = np.random.default_rng(4)
        own = Update("pi-c", task.round_id, task.task_id, "c1", task.model_id, task.model_version, MAX_EXAMPLES,
                     encode_dense(random_delta(shapes, rng)), metrics={"loss": -0.0, "norm": 5e-324})
        body = as_map(own)

        def send(payload: bytes, qos: int = 1, channel: str = "update") -> None:
            pi_c.publish(device_topic("pi-c", channel), payload, qos=qos).wait_for_publish(5)

        # Valid in form, wrong in state: none answers pi-c's task, so its flight stays.
        send(raw_frame(UPDATE, {**body, "task_id": "never-dispatched", "update_id": "s1"}))
        send(raw_frame(UPDATE, {**body, "task_id": a_task.task_id, "update_id": "s2"}))  # pi-a's task, as pi-c
        send(encode_message(Decline("pi-c", a_task.round_id, a_task.task_id, "battery_low")))
        send(encode_message(Decline("pi-a", a_task.round_id, a_task.task_id, "battery_low")))  # pi-a's name
        # Out of range: refused before they are read as anything.
        for field, value in (("num_examples", MAX_EXAMPLES + 1), ("num_examples", -1), ("num_examples", -(2**63)),
                             ("num_examples", "7"), ("num_examples", 7.0), ("num_examples", {"n": 7}),
                             ("round_id", 2**64 - 1), ("metrics", {"loss": math.nan}),
                             ("metrics", {"loss": -math.inf}), ("metrics", {"loss": {"nested": 1.0}})):
            send(raw_frame(UPDATE, {**body, field: value, "update_id": "r"}))
        for _ in range(STORM):  # busy: each check-in past the budget is refused, none re-sends its task
            send(checkin, channel="checkin")
        _judged(c, Counter(stale_round=4, malformed=10, checkin_too_often=STORM - (c.config.checkin_burst - 1)))
        assert c.machine.flight("pi-c").task_id == task.task_id
        assert sum(isinstance(m, TrainTask) for m in heard) == 1

        # The largest example count the wire carries (weighted as max_examples), -0.0 and a
        # subnormal in its metrics, at QoS 0.
        before = Counter(c.rejections)
        send(encode_message(own), qos=0)
        pump_until(c, lambda: c.machine.buffered == 1)
        send(encode_message(own), qos=2)  # the same again: a duplicate, acknowledged as in
        send(raw_frame(UPDATE, {**body, "update_id": "c2"}))  # a second update for the answered task
        send(encode_message(Decline("pi-c", task.round_id, task.task_id, "battery_low")))  # and a decline of it
        _judged(c, before + Counter(duplicate=1, stale_round=2))

        def acks() -> list[tuple[str, bool, str]]:
            return [(m.update_id, m.accepted, m.reason) for m in heard if isinstance(m, Ack) and m.update_id[0] == "c"]
        wait_for(lambda: len(acks()) == 3, "pi-c's Acks")
        assert acks() == [("c1", True, ""), ("c1", True, "duplicate"), ("c2", False, "stale_round")]

        honest = [d.update(random_delta(shapes, rng), update_id=f"good-{d.id}") for d in fleet.devices]
        for device, update in zip(fleet.devices, honest):
            device.send(encode_message(update))
        pump_until(c, lambda: c.state.version == 1)
        assert c.history[-1].reports == 3
        capped = dataclasses.replace(own, num_examples=c.config.max_examples)  # weights.py
        assert_params(c.state.params, fedbuff_oracle(old, [capped, *honest], [0, 0, 0]))
        wait_for(lambda: all(d.acks() for d in fleet.devices), "the honest devices' Acks")
        assert [a for d in fleet.devices for a in d.acks()] == [(True, "")] * 2

        # A restart on the same store: the broker replays the retained check-in; pi-c replays its
        # counted update and its decline live.
        c.transport.close()
        c = fleet.coordinator = AsyncCoordinator(broker.connect("coordinator"), strategy_from_config(fleet.config),
                                                 fleet.manifest, fleet.runtime.initial("shared"), fleet.config,
                                                 store=RoundStore(tmp_path / "state.db"))
        c.start()
        send(encode_message(own))
        send(encode_message(Decline("pi-c", task.round_id, task.task_id, "battery_low")))
        _judged(c, Counter(retained=1, duplicate=1, stale_round=1))
        wait_for(lambda: len(acks()) == 4, "the replay's Ack")
        assert acks()[-1] == ("c1", True, "duplicate")
        assert c.state.version == 1 and "pi-c" in c.registry
    finally:
        broker.close()
