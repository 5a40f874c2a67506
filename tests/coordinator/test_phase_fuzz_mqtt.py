"""The round's state machine attacked through a real, secured Mosquitto (the shipped ACL) by a
selected device fedge did not write (raw paho, MQTT 5): what the broker decides. A decline on an
honest device's topic is stopped by the ACL and never reaches the coordinator; a thousand
check-ins at QoS 1 with changing claims pass the broker and are refused past their budget; its
own decline twice and an update for the declined task are refused by name. Every refusal is
exported, the honest devices' round commits to the plain mean of their deltas (the oracle), and
neither honest device is parked or paced out of the round."""

from __future__ import annotations

import time

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import CheckIn, Decline, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.coordinator.fleet import assert_params, copy_params, random_delta
from tests.coordinator.mqtt_attackers import (
    await_tasks,
    exported_rejections,
    pump_until,
    secured_broker,
    start_fleet,
    wait_for,
)
from tests.coordinator.phase_attack import plain_mean

pytestmark = pytest.mark.mosquitto
STORM = 1000


def test_a_selected_device_out_of_turn_through_a_secured_broker(mosquitto_factory, tmp_path):
    secured = secured_broker(mosquitto_factory, tmp_path)
    # no refill during the storm, however slow the machine: exactly checkin_burst - 1 more pass
    fleet = start_fleet(secured, tmp_path, weighting="equal", clients_per_round=3, min_reports=2,
                        checkin_refill_s=3600.0)
    c, broker = fleet.coordinator, fleet.broker
    try:
        pi_c = broker.raw("pi-c", mqtt.MQTTv5)
        heard: list = []
        pi_c.on_message = lambda _c, _u, msg: heard.append(decode_message(msg.payload))
        pi_c.subscribe(device_topic("pi-c", "task"), qos=1)
        pi_c.publish(device_topic("pi-c", "checkin"), encode_message(CheckIn("pi-c", num_examples=9)),
                     qos=1).wait_for_publish(5)
        pump_until(c, lambda: "pi-c" in c.registry)
        old = copy_params(c.state.params)
        assert c.begin_round() and set(c.round.machine.selected) == {"pi-a", "pi-b", "pi-c"}
        await_tasks(fleet.devices)
        wait_for(lambda: any(isinstance(m, TrainTask) for m in heard), "pi-c's task")
        task = next(m for m in heard if isinstance(m, TrainTask))
        a_task = fleet.devices[0].task()

        # pi-a's topic: the ACL stops it at the broker (MQTT 5: PUBACK "not authorized")
        forged = pi_c.publish(device_topic("pi-a", "update"),
                              encode_message(Decline("pi-a", a_task.round_id, a_task.task_id, "battery_low")), qos=1)
        forged.wait_for_publish(5)
        start = time.monotonic()
        for i in range(STORM):
            claim = CheckIn("pi-c", eligible=bool(i % 2), reason=("", "too_hot", "bad_dataset")[i % 3],
                            num_examples=i, model_ids=(f"m{i % 4}",))
            pi_c.publish(device_topic("pi-c", "checkin"), encode_message(claim), qos=1)
        decline = encode_message(Decline("pi-c", task.round_id, task.task_id, "battery_low"))
        for _ in range(2):
            pi_c.publish(device_topic("pi-c", "update"), decline, qos=1)
        late = Update("pi-c", task.round_id, task.task_id, "late", task.model_id, task.model_version, 9,
                      encode_dense(random_delta({k: v.shape for k, v in old.items()}, np.random.default_rng(1))))
        pi_c.publish(device_topic("pi-c", "update"), encode_message(late), qos=1).wait_for_publish(10)
        sent_s = time.monotonic() - start
        pump_until(c, lambda: c.rejections["stale_round"] == 1)
        while c.pump(0.0):
            pass
        print(f"\n{STORM} check-ins, 2 declines and an update published at QoS 1 in {sent_s:.2f} s")

        refused = c.rejections["checkin_too_often"]
        assert refused == STORM - (c.config.checkin_burst - 1)  # pi-c's first check-in took one
        assert dict(c.rejections) == {"checkin_too_often": refused, "duplicate": 1, "stale_round": 1}
        assert exported_rejections(c) == c.rejections
        assert c.declines == {"battery_low": 1} and c.round.machine.declined == {"pi-c": "battery_low"}
        assert c.round.machine.expects("pi-a") and c.round.machine.expects("pi-b")

        rng = np.random.default_rng(2)
        shapes = {k: v.shape for k, v in old.items()}
        deltas = [random_delta(shapes, rng) for _ in fleet.devices]
        for device, delta in zip(fleet.devices, deltas):
            device.send(encode_message(device.update(delta, update_id=f"good-{device.id}")))
        pump_until(c, lambda: c.round is not None and len(c.round.machine.reported) == 2)
        record = c.tick()
        assert record.committed and record.reports == 2 and record.declines == {"pi-c": "battery_low"}
        assert_params(c.state.params, plain_mean(old, deltas))
        wait_for(lambda: all(d.acks() for d in fleet.devices), "the honest devices' Acks")
        assert [a for d in fleet.devices for a in d.acks()] == [(True, "")] * 2
        assert not any(c.registry[d.id].parked for d in fleet.devices)
    finally:
        broker.close()
