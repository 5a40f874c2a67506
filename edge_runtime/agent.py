"""The device's message handling: tasks, acks, pace, artifacts, over any Transport.

It subscribes to its own task, ack and artifact topics and the announcement, announces
itself with a CheckIn, runs each task through DeviceRuntime, publishes the Update or
Decline, and keeps every update on disk until the coordinator's Ack for it arrives. It
reads time from the injected clock and never sleeps: the loop that owns sleeping is
`edge_runtime.loop` on a board, and the simulator's driver in a simulated fleet.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from .kernel.clock import SystemClock
from .kernel.codec import decode_message, encode_message
from .device import DeviceRuntime
from .kernel.errors import ArtifactError, CodecError, PayloadTooLarge, RoundModelError, TransportError
from .fetch import ArtifactDownload
from .kernel.manifest import MANIFEST_FILE, sha256_file
from .pending import PendingUploads
from .kernel.protocol import (ANNOUNCE_TOPIC, MODEL_PARTS_FILTER, Ack, Announcement, ArtifactFile, Decline,
                              FetchRequest, ModelPart, Pace, Status, TrainTask, Update, device_topic)
from .kernel.round_model import ModelWaits
from .seen_tasks import SeenTasks
from .task import TaskState, advance
from .kernel.transport.base import Message, Transport, topic_matches

log = logging.getLogger("fedge.agent")

_SAFE_ID = re.compile(r"[0-9A-Za-z_-][0-9A-Za-z_.-]{0,127}")
_SEEN_TASKS_KEPT = 256  # task ids remembered across restarts, so a redelivered task is not trained twice
_MAX_BACKOFF_STEPS = 5  # resend interval grows to republish_s * 2**5 while no Ack comes


class DeviceAgent:
    def __init__(
        self,
        runtime: DeviceRuntime,
        transport: Transport,
        clock=None,
        max_message_bytes: int = 64 << 20,
        *,
        artifacts_dir: str | Path | None = None,  # where fetched models go; default under the state dir
        republish_s: float = 10.0,  # resend unacknowledged updates after this, doubling while none is acked
        checkin_s: float = 60.0,  # check in again this often unless paced otherwise (seconds)
        fetch_timeout_s: float = 120.0,  # give up on a model download after this (seconds)
        model_wait_s: float = 15.0,  # wait this long for a round's model parts, then ask for the task inline
        pending_max_age_s: float = 7 * 24 * 3600.0,  # drop an update nobody acknowledged after this
    ):
        self.runtime = runtime
        self.transport = transport
        self.clock = clock or SystemClock()
        self.max_message_bytes = max_message_bytes
        self.home = Path(runtime.state_root) / runtime.device_id
        self.artifacts_dir = Path(artifacts_dir) if artifacts_dir else self.home / "artifacts"
        self.pending = PendingUploads(self.home / "pending")
        self.republish_s = republish_s
        self.checkin_s = checkin_s
        self.fetch_timeout_s = fetch_timeout_s
        self.model_wait_s = model_wait_s
        self.model_waits = ModelWaits(max_message_bytes)
        self._parts_subscribed = False
        self.pending_max_age_s = pending_max_age_s
        self.tasks: dict[str, TaskState] = {}  # task_id -> state
        self._received: dict[str, float] = {}  # task_id -> clock time it arrived, until it trains or is declined
        self.declines: dict[str, bytes] = {}  # task_id -> the Decline sent, re-sent if the task comes again
        self.waiting: dict[str, tuple[list[TrainTask], ArtifactDownload, float]] = {}  # model_id -> downloads
        self.announcement: Announcement | None = None
        self.next_checkin = float("inf")
        self.next_republish = float("inf")
        self._unacked_resends = 0
        self.started = False
        self.seen = SeenTasks(self.home / "seen_tasks.json", _SEEN_TASKS_KEPT)
        # A crash between staging a task's state and keeping its update: finish or undo it.
        recover = getattr(runtime, "recover", None)
        if recover is not None:
            recover(lambda update_id: update_id in self.pending)

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
        self._announce_online()
        self.republish_pending()  # left over from before a restart, ahead of new work
        self._decline_interrupted()
        self.check_in()
        self.started = True

    def on_reconnect(self) -> None:
        """The link came back: the broker may have lost anything in flight, so resend."""
        self._announce_online()  # the Last Will left "offline" retained
        self._unacked_resends = 0
        self.republish_pending()
        for tasks, download, _ in self.waiting.values():
            self._request_files(tasks[0], download)
        for task in self.model_waits.asked_inline():
            self._request_inline(task)
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
            for stale in self.pending.older_than(self.pending_max_age_s):
                log.warning("device %s: dropping update %s of round %d: no Ack in %g s", self.device_id,
                            stale.update_id, stale.round_id, self.pending_max_age_s)
                self.pending.remove(stale.update_id)
            self._unacked_resends = min(self._unacked_resends + 1, _MAX_BACKOFF_STEPS)
            self.republish_pending()
        for model_id, (tasks, download, started) in list(self.waiting.items()):
            if now - started > self.fetch_timeout_s:
                del self.waiting[model_id]
                for task in tasks:
                    self._decline(task, "artifact_fetch_timeout", f"model {model_id}: still missing {download.missing() or 'manifest'}")
        for task in self.model_waits.overdue(now, self.model_wait_s):
            log.info("device %s: round model for task %s not complete after %g s; asking for it inline",
                     self.device_id, task.task_id, self.model_wait_s)
            self._request_inline(task)
        for task in self.model_waits.expired(now, self.model_wait_s + self.fetch_timeout_s):
            self._decline(task, "round_model_timeout", "neither the round's model parts nor an inline task came")
        self._sync_parts_subscription()

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
            before = self.announcement.session if self.announcement else None
            self.announcement = message
            if not msg.retain and message.session != before:
                self.check_in()  # a coordinator (re)started: it may have missed our last check-in
        elif isinstance(message, ModelPart) and topic_matches(MODEL_PARTS_FILTER, msg.topic):
            self._on_model_part(message)
        elif getattr(message, "device_id", None) != self.device_id and not isinstance(message, ArtifactFile):
            log.warning("device %s ignored %s addressed to someone else on %s", self.device_id, type(message).__name__, msg.topic)
        elif isinstance(message, TrainTask):
            self._on_task(message)
        elif isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Pace):
            self.next_checkin = self.clock.now() + max(0.0, message.retry_after_s)
        elif isinstance(message, ArtifactFile) and msg.topic == device_topic(self.device_id, "artifact"):
            self._on_artifact(message)
        else:
            log.warning("device %s ignored unexpected %s on %s", self.device_id, type(message).__name__, msg.topic)
        return True

    def republish_pending(self) -> int:
        """Send every unacknowledged update again (the broker is not a durable store)."""
        items = self.pending.items()
        # Set first: if the broker refuses a publish, the next try waits its turn (backoff).
        self.next_republish = self.clock.now() + self.republish_s * 2 ** self._unacked_resends
        for item in items:
            self._publish("update", item.payload)
        return len(items)

    # ------------------------------------------------------------------ handlers

    def _on_task(self, task: TrainTask) -> None:
        if task.task_id in self.tasks or task.task_id in self.seen:
            self._answer_again(task)
            return
        self.tasks[task.task_id] = TaskState.IDLE
        self._received[task.task_id] = self.clock.now()  # task.deadline_s counts from here
        self.seen.add(task.task_id, task.round_id)
        if not _SAFE_ID.fullmatch(task.model_id):
            self._decline(task, "bad_model_id", f"model id {task.model_id!r} is not a safe name")
            return
        if not self._model_ready(task):
            return
        self._run_task(task)

    def _answer_again(self, task: TrainTask) -> None:
        """A task seen before came again (QoS 1 redelivery, or the coordinator resending after a
        loss): repeat the answer, never the training."""
        if self.model_waits.waiting(task.task_id):
            if not task.round_model_sha256 and self.model_waits.take(task.task_id):
                self._sync_parts_subscription()
                self._received[task.task_id] = self.clock.now()  # its deadline_s counts from now
                self._train(task)  # the inline copy we asked for
            return
        if task.task_id in self.declines:
            self._publish("update", self.declines[task.task_id])
        elif task.model_id in self.waiting:
            tasks, download, _ = self.waiting[task.model_id]
            self._request_files(tasks[0], download)
        else:
            self.republish_pending()
        log.info("device %s: task %s already seen; answered again", self.device_id, task.task_id)

    def _run_task(self, task: TrainTask) -> None:
        """Train once the task's params are at hand: inline, or from the round's model parts."""
        try:
            filled = self.model_waits.resolve(task, self.clock.now())
        except RoundModelError as exc:
            self._decline(task, exc.reason, str(exc))
            return
        if filled is None:
            self._sync_parts_subscription()
            return
        self._train(filled)

    def _train(self, task: TrainTask) -> None:
        now = self.clock.now()
        received = self._received.pop(task.task_id, now)
        deadline_at = received + task.deadline_s
        if now >= deadline_at:  # it waited for its model (artifacts or parts) past its deadline
            self._decline(task, "deadline_passed", f"the model came {now - received:.1f} s after the task; "
                                                   f"it allowed {task.deadline_s:g} s")
            return
        self.tasks[task.task_id] = advance(TaskState.IDLE, "task")

        def past_deadline() -> str | None:  # between training steps: a straggler stops, not just arrives late
            return "deadline" if self.clock.now() >= deadline_at else None

        kept: dict[str, bytes] = {}  # update_id -> the encoded Update as kept

        def persist(update: Update) -> None:  # on disk before the device's state moves, and before it leaves
            payload = encode_message(update)
            if len(payload) > self.max_message_bytes:  # never store what can never be sent
                raise PayloadTooLarge(f"update of {len(payload)} bytes > {self.max_message_bytes}")
            self.pending.add(update.round_id, update.update_id, payload)  # the commit point: see store.py
            kept[update.update_id] = payload

        reply = self.runtime.handle_task(task, deadline_check=past_deadline, persist=persist)
        if isinstance(reply, Decline):
            self.tasks[task.task_id] = advance(TaskState.TRAINING, "abort" if reply.stage == "during" else "decline")
            self._send_decline(reply)
            return
        assert isinstance(reply, Update)
        if reply.update_id not in kept:  # a runtime that does not call persist
            try:
                persist(reply)
            except PayloadTooLarge as exc:
                self.tasks[task.task_id] = advance(TaskState.TRAINING, "decline")
                self._send_decline(Decline(self.device_id, task.round_id, task.task_id, exc.reason, str(exc), "during"))
                return
        self.tasks[task.task_id] = advance(TaskState.TRAINING, "trained")
        log.info("device %s: round %d task %s: %d steps, loss %.4g, %d bytes up", self.device_id, task.round_id,
                 task.task_id, reply.metrics.get("steps", 0), reply.metrics.get("loss", float("nan")),
                 len(kept[reply.update_id]))
        self.next_republish = self.clock.now() + self.republish_s  # first: a failed publish is retried by tick()
        self._publish("update", kept[reply.update_id])

    def _on_ack(self, ack: Ack) -> None:
        self.seen.answered(ack.task_id)  # before the update goes: a pending update says "answered" until then
        self.pending.remove(ack.update_id)
        self._unacked_resends = 0
        on_ack = getattr(self.runtime, "on_ack", None)
        if on_ack is not None:
            on_ack(ack)  # e.g. SCAFFOLD puts its control variate back when an upload was refused
        if self.tasks.get(ack.task_id) == TaskState.UPLOADING:
            self.tasks[ack.task_id] = advance(TaskState.UPLOADING, "ack" if ack.accepted else "rejected")
        if not ack.accepted:
            log.info("device %s: update %s rejected: %s", self.device_id, ack.update_id, ack.reason)

    # ------------------------------------------------------------------ round model

    def _on_model_part(self, part: ModelPart) -> None:
        ready, inline, why = self.model_waits.on_part(part)
        for task in inline:
            log.warning("device %s: round model for task %s refused (%s); asking for it inline", self.device_id,
                        task.task_id, why)
            self._request_inline(task)
        self._sync_parts_subscription()
        for task in ready:
            self._train(task)

    def _request_inline(self, task: TrainTask) -> None:
        self._publish("fetch", encode_message(FetchRequest(self.device_id, task.model_id, task_id=task.task_id)))

    def _sync_parts_subscription(self) -> None:
        """Subscribed to the model parts only while a task waits for them: the broker then sends
        the retained parts once per round to the devices that train, not to the whole fleet."""
        want = self.model_waits.listening
        if want == self._parts_subscribed:
            return
        try:
            if want:
                self.transport.subscribe(MODEL_PARTS_FILTER)
            else:
                self.transport.unsubscribe(MODEL_PARTS_FILTER)
        except TransportError:
            return  # the link is down: tick() tries again
        self._parts_subscribed = want

    # ------------------------------------------------------------------ artifacts

    def _model_ready(self, task: TrainTask) -> bool:
        """True if the task's model is installed and matches the task's manifest hash; else a
        download starts (or joins one under way) and the task waits for it."""
        installed = self.runtime.model_dirs.get(task.model_id)
        fetched = self.artifacts_dir / task.model_id
        for directory in (installed, fetched):
            if directory is None or not (Path(directory) / MANIFEST_FILE).exists():
                continue
            if task.manifest_sha256 and sha256_file(Path(directory) / MANIFEST_FILE) != task.manifest_sha256:
                log.warning("device %s: model %s in %s does not match the task's manifest hash; fetching it",
                            self.device_id, task.model_id, directory)
                continue
            try:
                if directory != installed:
                    self.runtime.add_model(task.model_id, directory)
            except ArtifactError as exc:
                log.warning("device %s: installed model %s is unusable: %s", self.device_id, task.model_id, exc)
                continue
            return True
        if task.model_id in self.waiting:
            self.waiting[task.model_id][0].append(task)
            return False
        try:
            download = ArtifactDownload(task.model_id, task.manifest_sha256, fetched)
        except ArtifactError as exc:
            self._decline(task, exc.reason, str(exc))
            return False
        self.waiting[task.model_id] = ([task], download, self.clock.now())
        self._request_files(task, download)
        log.info("device %s: fetching model %s for task %s", self.device_id, task.model_id, task.task_id)
        return False

    def _request_files(self, task: TrainTask, download: ArtifactDownload) -> None:
        files = download.missing() if download.manifest is not None else ()
        self._publish("fetch", encode_message(FetchRequest(self.device_id, task.model_id, files)))

    def _on_artifact(self, item: ArtifactFile) -> None:
        entry = self.waiting.get(item.model_id)
        if entry is None:
            return  # a late or repeated file for a model we already have
        tasks, download, _ = entry
        if item.path != MANIFEST_FILE and download.manifest is None:
            return  # a straggler from an earlier transfer; the manifest comes first in every transfer
        if item.path in download.received:
            return
        try:
            done = download.accept(item)
        except ArtifactError as exc:
            del self.waiting[item.model_id]
            log.warning("device %s: artifact %s of model %s refused: %s", self.device_id, item.path, item.model_id, exc)
            for task in tasks:
                self._decline(task, exc.reason, str(exc))
            return
        if not done:
            return
        del self.waiting[item.model_id]
        try:
            self.runtime.add_model(item.model_id, download.dest)
        except ArtifactError as exc:
            for task in tasks:
                self._decline(task, exc.reason, str(exc))
            return
        log.info("device %s: model %s installed and verified", self.device_id, item.model_id)
        for task in tasks:
            self._run_task(task)

    # ------------------------------------------------------------------ helpers

    def _decline(self, task: TrainTask, reason: str, detail: str) -> None:
        self._received.pop(task.task_id, None)
        self.tasks[task.task_id] = TaskState.DECLINED
        self._send_decline(Decline(self.device_id, task.round_id, task.task_id, reason, detail, "before"))

    def _send_decline(self, decline: Decline) -> None:
        log.info("device %s: round %d task %s declined: %s%s", self.device_id, decline.round_id, decline.task_id,
                 decline.reason, f" ({decline.detail})" if decline.detail else "")
        payload = encode_message(decline)
        self.declines[decline.task_id] = payload
        if len(self.declines) > _SEEN_TASKS_KEPT:
            self.declines.pop(next(iter(self.declines)))
        self._publish("update", payload)
        self.seen.answered(decline.task_id)  # after it left: a crash before says "interrupted" on restart

    def _decline_interrupted(self) -> None:
        """Tasks a previous run of this device received but never answered (it stopped while
        training, or while waiting for the model): decline them, so their rounds need not wait
        for the deadline."""
        kept = set()
        for item in self.pending.items():
            try:
                kept.add(decode_message(item.payload).task_id)
            except CodecError:
                pass
        for task_id, round_id in self.seen.unanswered():
            if task_id in self.tasks or task_id in kept:  # this run's, or its update is pending (an answer)
                continue
            log.warning("device %s: task %s of round %d was interrupted before it was answered; declining it",
                        self.device_id, task_id, round_id)
            self._send_decline(Decline(self.device_id, round_id, task_id, "interrupted",
                                       "the device stopped before it answered this task", "during"))

    def _announce_online(self) -> None:
        self.transport.publish(device_topic(self.device_id, "status"), encode_message(Status(self.device_id, True)),
                               qos=1, retain=True)

    def _publish(self, channel: str, payload: bytes) -> None:
        self.transport.publish(device_topic(self.device_id, channel), payload, qos=1)
