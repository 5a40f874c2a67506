"""A lightweight simulated fleet for scale drills: hundreds of devices, one MQTT session each
(own client id, username and ACL), driven by one thread; no training. A device checks in until
it holds a task, answers a TrainTask with a random delta on the task's shard topic, and resends
it every `resend_s` until its Ack (what the real uplink does); it checks in again after a
reconnect (session_present = 0 loses its queued task) and every `checkin_s` while idle.
"""

from __future__ import annotations

import threading
import uuid

import numpy as np

from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.errors import FedgeError
from fedge.edge_runtime.kernel.protocol import Ack, CheckIn, TrainTask, Update, device_topic, shard_update_topic
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.update_codec import encode_dense


class LightDevice:
    def __init__(self, device_id: str, settings, shapes, seed: int):
        self.id, self.shapes = device_id, shapes
        self.rng = np.random.default_rng(seed)
        self.n = int(self.rng.integers(10, 100))
        self.t = MqttTransport(device_id, settings, will=DeviceAgent.last_will(device_id))
        self.pending: dict[str, tuple[str, bytes]] = {}  # update_id -> (topic, frame), until its Ack
        self.answered: set[str] = set()  # task ids
        self.next_checkin = self.next_resend = 0.0
        self.connections = 0

    def step(self, now: float, checkin_s: float, resend_s: float) -> None:
        if not self.t.connected:
            return
        if self.t.connection_count != self.connections:  # (re)connected: subscriptions replay; check in
            if self.connections == 0:
                for channel in ("task", "ack"):
                    self.t.subscribe(device_topic(self.id, channel))
            self.connections, self.next_checkin = self.t.connection_count, now
        while (msg := self.t.receive(0.0)) is not None:
            message = decode_message(msg.payload)
            if isinstance(message, TrainTask) and message.task_id not in self.answered:
                self.answered.add(message.task_id)
                self._answer(message)
            elif isinstance(message, Ack):
                self.pending.pop(message.update_id, None)
        if now >= self.next_resend:
            self.next_resend = now + resend_s
            for topic, frame in self.pending.values():
                self.t.publish(topic, frame, qos=1)
        if now >= self.next_checkin:
            self.next_checkin = now + checkin_s
            self.t.publish(device_topic(self.id, "checkin"), encode_message(CheckIn(self.id, num_examples=self.n)),
                           qos=1)

    def _answer(self, task: TrainTask) -> None:
        delta = {k: (0.01 * self.rng.normal(size=s)).astype(np.float32) for k, s in self.shapes.items()}
        update = Update(self.id, task.round_id, task.task_id, uuid.uuid4().hex, task.model_id, task.model_version,
                        self.n, encode_dense(delta), shard=task.shard)
        topic = shard_update_topic(task.shard, self.id)
        self.pending[update.update_id] = (topic, encode_message(update))
        self.t.publish(topic, self.pending[update.update_id][1], qos=1)


class LightFleet:
    def __init__(self, devices: list[LightDevice], checkin_s: float = 3.0, resend_s: float = 2.0):
        self.devices, self.checkin_s, self.resend_s = devices, checkin_s, resend_s
        self._stop = threading.Event()
        for d in devices:
            d.t.connect(timeout=0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import time

        while not self._stop.wait(0.02):
            now = time.monotonic()
            for d in self.devices:
                try:
                    d.step(now, self.checkin_s, self.resend_s)
                except FedgeError:  # a link that dropped mid-step: the transport reconnects, next step retries
                    pass

    def stragglers(self) -> str:
        """For a failed wait: the devices with no link up, and those linked but not yet past
        their first step (subscribed and checked in), by id."""
        down = [d.id for d in self.devices if not d.t.connected]
        silent = [d.id for d in self.devices if d.t.connected and d.connections == 0]
        return (f"light fleet: {len(down)} of {len(self.devices)} without a link {down[:20]}, {len(silent)} linked "
                f"but never checked in {silent[:20]}")

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)
        for d in self.devices:
            d.t.close()
