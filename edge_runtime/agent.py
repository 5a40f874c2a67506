"""The device loop: the only place on the device that touches the transport and the clock.

It subscribes to its own task and ack topics, announces itself with a CheckIn, runs each
task through DeviceRuntime, publishes the Update or Decline, and keeps every update until
the coordinator's Ack for it arrives.
"""

from __future__ import annotations

import logging

from .clock import SystemClock
from .codec import decode_message, encode_message
from .device import DeviceRuntime
from .errors import CodecError
from .protocol import Ack, Decline, TrainTask, Update, device_topic
from .task import TaskState, advance
from .transport.base import Transport

log = logging.getLogger("fedge.agent")


class DeviceAgent:
    def __init__(self, runtime: DeviceRuntime, transport: Transport, clock=None, max_message_bytes: int = 64 << 20):
        self.runtime = runtime
        self.transport = transport
        self.clock = clock or SystemClock()
        self.max_message_bytes = max_message_bytes
        self.tasks: dict[str, TaskState] = {}  # task_id -> state
        self.pending: dict[str, bytes] = {}  # update_id -> encoded Update, until acked

    @property
    def device_id(self) -> str:
        return self.runtime.device_id

    def start(self) -> None:
        self.transport.subscribe(device_topic(self.device_id, "task"))
        self.transport.subscribe(device_topic(self.device_id, "ack"))
        self._publish("checkin", encode_message(self.runtime.check_in()))

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Handle at most one incoming message; True if one was handled."""
        msg = self.transport.receive(timeout)
        if msg is None:
            return False
        try:
            message = decode_message(msg.payload, max_bytes=self.max_message_bytes)
        except CodecError as exc:
            log.warning("device %s dropped a bad message on %s: %s (%s)", self.device_id, msg.topic, exc.reason, exc)
            return True
        if isinstance(message, TrainTask) and message.device_id == self.device_id:
            self._run_task(message)
        elif isinstance(message, Ack) and message.device_id == self.device_id:
            self.pending.pop(message.update_id, None)
            if self.tasks.get(message.task_id) == TaskState.UPLOADING:
                self.tasks[message.task_id] = advance(TaskState.UPLOADING, "ack" if message.accepted else "rejected")
            if not message.accepted:
                log.info("device %s: update %s rejected: %s", self.device_id, message.update_id, message.reason)
        else:
            log.warning("device %s ignored unexpected %s on %s", self.device_id, type(message).__name__, msg.topic)
        return True

    def _run_task(self, task: TrainTask) -> None:
        if task.task_id in self.tasks:
            log.info("device %s: task %s already seen, ignored", self.device_id, task.task_id)
            return
        self.tasks[task.task_id] = advance(TaskState.IDLE, "task")
        reply = self.runtime.handle_task(task)
        if isinstance(reply, Decline):
            self.tasks[task.task_id] = advance(TaskState.TRAINING, "abort" if reply.stage == "during" else "decline")
            self._publish("update", encode_message(reply))
            return
        assert isinstance(reply, Update)
        self.tasks[task.task_id] = advance(TaskState.TRAINING, "trained")
        payload = encode_message(reply)
        self.pending[reply.update_id] = payload
        self._publish("update", payload)

    def republish_pending(self) -> int:
        """Send every unacknowledged update again (the broker is not a durable store)."""
        for payload in self.pending.values():
            self._publish("update", payload)
        return len(self.pending)

    def _publish(self, channel: str, payload: bytes) -> None:
        self.transport.publish(device_topic(self.device_id, channel), payload, qos=1)
