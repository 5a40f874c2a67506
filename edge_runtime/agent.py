"""The device's message handling: tasks, acks, pace, artifacts, over any Transport.

It subscribes to its own task, ack and artifact topics and the announcement, announces
itself with a CheckIn, runs each task through DeviceRuntime, publishes the Update or
Decline, and keeps every update on disk until the coordinator's Ack for it arrives. It
reads time from the injected clock and never sleeps: the loop that owns sleeping is
`edge_runtime.loop` on a board, and the simulator's driver in a simulated fleet.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .clock import SystemClock
from .codec import decode_message, encode_message
from .device import DeviceRuntime
from .errors import ArtifactError, CodecError
from .fetch import ArtifactDownload
from .pending import PendingUploads
from .protocol import (ANNOUNCE_TOPIC, Ack, Announcement, ArtifactFile, Decline, FetchRequest, Pace, Status, TrainTask,
                       Update, device_topic)
from .task import TaskState, advance
from .transport.base import Message, Transport

log = logging.getLogger("fedge.agent")


class DeviceAgent:
    def __init__(
        self,
        runtime: DeviceRuntime,
        transport: Transport,
        clock=None,
        max_message_bytes: int = 64 << 20,
        *,
        artifacts_dir: str | Path | None = None,  # where fetched models go; default under the state dir
        republish_s: float = 10.0,  # resend unacknowledged updates this often (seconds)
        checkin_s: float = 60.0,  # check in again this often unless paced otherwise (seconds)
        fetch_timeout_s: float = 120.0,  # give up on a model download after this (seconds)
    ):
        self.runtime = runtime
        self.transport = transport
        self.clock = clock or SystemClock()
        self.max_message_bytes = max_message_bytes
        home = Path(runtime.state_root) / runtime.device_id
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else home / "artifacts"
        self.pending = PendingUploads(home / "pending")
        self.republish_s = republish_s
        self.checkin_s = checkin_s
        self.fetch_timeout_s = fetch_timeout_s
        self.tasks: dict[str, TaskState] = {}  # task_id -> state
        self.waiting: dict[str, tuple[TrainTask, ArtifactDownload, float]] = {}  # model_id -> (task, download, started)
        self.announcement: Announcement | None = None
        self.next_checkin = float("inf")
        self.next_republish = float("inf")
        self.last_pace: Pace | None = None
        self.started = False

    @property
    def device_id(self) -> str:
        return self.runtime.device_id

    @staticmethod
    def last_will(device_id: str) -> Message:
        """The Status the broker publishes (retained) if this device vanishes."""
        return Message(device_topic(device_id, "status"), encode_message(Status(device_id, False, "link lost")), retain=True)

    def start(self) -> None:
        for channel in ("task", "ack", "artifact"):
            self.transport.subscribe(device_topic(self.device_id, channel))
        self.transport.subscribe(ANNOUNCE_TOPIC)
        self.transport.publish(device_topic(self.device_id, "status"), encode_message(Status(self.device_id, True)),
                               qos=1, retain=True)
        self.check_in()
        self.republish_pending()  # left over from before a restart
        self.started = True

    def on_reconnect(self) -> None:
        """The link came back: the broker may have lost anything in flight, so resend."""
        self.republish_pending()
        self.check_in()

    def check_in(self) -> None:
        self._publish("checkin", encode_message(self.runtime.check_in()))
        self.next_checkin = self.clock.now() + self.checkin_s

    def tick(self) -> None:
        """Time-driven work: periodic check-in, resending unacknowledged updates, fetch timeouts."""
        now = self.clock.now()
        if now >= self.next_checkin:
            self.check_in()
        if len(self.pending) and now >= self.next_republish:
            self.republish_pending()
        for model_id, (task, download, started) in list(self.waiting.items()):
            if now - started > self.fetch_timeout_s:
                del self.waiting[model_id]
                self._decline(task, "artifact_fetch_timeout", f"model {model_id}: still missing {download.missing() or 'manifest'}")

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
        if isinstance(message, Announcement) and msg.topic == ANNOUNCE_TOPIC:
            self.announcement = message
        elif getattr(message, "device_id", None) != self.device_id and not isinstance(message, ArtifactFile):
            log.warning("device %s ignored %s addressed to someone else on %s", self.device_id, type(message).__name__, msg.topic)
        elif isinstance(message, TrainTask):
            self._on_task(message)
        elif isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Pace):
            self.last_pace = message
            self.next_checkin = self.clock.now() + max(0.0, message.retry_after_s)
        elif isinstance(message, ArtifactFile) and msg.topic == device_topic(self.device_id, "artifact"):
            self._on_artifact(message)
        else:
            log.warning("device %s ignored unexpected %s on %s", self.device_id, type(message).__name__, msg.topic)
        return True

    def republish_pending(self) -> int:
        """Send every unacknowledged update again (the broker is not a durable store)."""
        items = self.pending.items()
        for item in items:
            self._publish("update", item.payload)
        self.next_republish = self.clock.now() + self.republish_s
        return len(items)

    # ------------------------------------------------------------------ handlers

    def _on_task(self, task: TrainTask) -> None:
        if task.task_id in self.tasks:
            log.info("device %s: task %s already seen, ignored", self.device_id, task.task_id)
            return
        self.tasks[task.task_id] = TaskState.IDLE
        if task.model_id not in self.runtime.model_dirs and not self._start_fetch(task):
            return
        self._run_task(task)

    def _run_task(self, task: TrainTask) -> None:
        self.tasks[task.task_id] = advance(TaskState.IDLE, "task")
        reply = self.runtime.handle_task(task)
        if isinstance(reply, Decline):
            self.tasks[task.task_id] = advance(TaskState.TRAINING, "abort" if reply.stage == "during" else "decline")
            self._publish("update", encode_message(reply))
            return
        assert isinstance(reply, Update)
        self.tasks[task.task_id] = advance(TaskState.TRAINING, "trained")
        payload = encode_message(reply)
        self.pending.add(reply.round_id, reply.update_id, payload)  # on disk before it leaves
        self._publish("update", payload)
        self.next_republish = self.clock.now() + self.republish_s

    def _on_ack(self, ack: Ack) -> None:
        self.pending.remove(ack.update_id)
        if self.tasks.get(ack.task_id) == TaskState.UPLOADING:
            self.tasks[ack.task_id] = advance(TaskState.UPLOADING, "ack" if ack.accepted else "rejected")
        if not ack.accepted:
            log.info("device %s: update %s rejected: %s", self.device_id, ack.update_id, ack.reason)

    def _start_fetch(self, task: TrainTask) -> bool:
        """Ask the coordinator for the task's model; True if it is already installed here."""
        dest = self.artifacts_dir / task.model_id
        try:
            if (dest / "manifest.json").exists():
                self.runtime.add_model(task.model_id, dest)
                return True
            download = ArtifactDownload(task.model_id, task.manifest_sha256, dest)
        except ArtifactError as exc:
            self._decline(task, exc.reason, str(exc))
            return False
        self.waiting[task.model_id] = (task, download, self.clock.now())
        self._publish("fetch", encode_message(FetchRequest(self.device_id, task.model_id)))
        log.info("device %s: fetching model %s for task %s", self.device_id, task.model_id, task.task_id)
        return False

    def _on_artifact(self, item: ArtifactFile) -> None:
        entry = self.waiting.get(item.model_id)
        if entry is None:
            return  # a late or repeated file for a model we already have
        task, download, _ = entry
        try:
            done = download.accept(item)
        except ArtifactError as exc:
            del self.waiting[item.model_id]
            log.warning("device %s: artifact %s of model %s refused: %s", self.device_id, item.path, item.model_id, exc)
            self._decline(task, exc.reason, str(exc))
            return
        if done:
            del self.waiting[item.model_id]
            self.runtime.add_model(item.model_id, download.dest)
            log.info("device %s: model %s installed and verified", self.device_id, item.model_id)
            self._run_task(task)

    def _decline(self, task: TrainTask, reason: str, detail: str) -> None:
        self.tasks[task.task_id] = TaskState.DECLINED
        self._publish("update", encode_message(Decline(self.device_id, task.round_id, task.task_id, reason, detail, "before")))

    def _publish(self, channel: str, payload: bytes) -> None:
        self.transport.publish(device_topic(self.device_id, channel), payload, qos=1)
