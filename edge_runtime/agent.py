"""The device's message handling: tasks, acks, pace, artifacts, over any Transport.

It subscribes to its own task, ack and artifact topics and the announcement, announces
itself with a CheckIn, and drives each task through the transition table in task.py: every
message or timeout becomes a task event, and the agent executes the actions the table
returns (get the task's inputs, train through DeviceRuntime, send the Update or Decline).
Model delivery (delivery.py) fetches artifacts and round params; the uplink (uplink.py)
resends every update until the coordinator's Ack; the journal (journal.py) is what survives
a crash. It reads time from the injected clock and never sleeps: the loop that owns sleeping
is `edge_runtime.loop` on a board, and the simulator's driver in a simulated fleet.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .delivery import ModelDelivery
from .device import DeviceRuntime
from .evaluation import EvalAnswers
from .journal import DeviceJournal
from .kernel.clock import SystemClock
from .kernel.codec import decode_message, encode_message
from .kernel.device_folder import ARTIFACTS_DIR, UPLINK_RATE_FILE
from .kernel.errors import CodecError, PayloadTooLarge
from .kernel.protocol import (
    ANNOUNCE_TOPIC,
    DEVICE_MAX_TASK_S,
    MODEL_PARTS_FILTER,
    Ack,
    Announcement,
    ArtifactFile,
    Decline,
    EvalReport,
    EvalTask,
    ModelPart,
    Pace,
    Status,
    TrainTask,
    Update,
    device_of,
    device_topic,
    shard_update_topic,
)
from .kernel.transport.base import Message, Transport, topic_matches
from .secagg_intake import SecAggIntake
from .secagg_participant import NOISE_BELOW_FLOOR, SecAggParticipant
from .secagg_participant import REQUESTS as SECAGG_REQUESTS
from .state_health import BAD_STATE
from .task import (
    Acked,
    Failed,
    FetchInputs,
    InputsReady,
    InvalidTransition,
    Received,
    Refused,
    SendDecline,
    SendUpdate,
    TaskState,
    Train,
    Trained,
    on_event,
)
from .unanswered import answer_unreadable, interrupted, unreadable_task
from .uplink import Uplink
from .work_limits import EVAL_REFIT_S, UPLINK_BACKLOG, forget_answered, remember_announced, stop_check

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
        republish_s: float = 10.0,  # resend unacknowledged updates after this, doubling while none is acked
        checkin_s: float = 60.0,  # check in again this often unless paced otherwise (seconds)
        fetch_timeout_s: float = 120.0,  # give up on a model download after this (seconds)
        model_wait_s: float = 15.0,  # wait this long for a round's model parts, then ask for the task inline
        pending_max_age_s: float = 7 * 24 * 3600.0,  # drop an update nobody acknowledged after this
        secagg_identity: bytes | None = None,  # Ed25519 private key: signs secure-aggregation key adverts
        secagg_directory: dict[str, bytes] | None = None,  # the fleet's identity public keys (provisioned)
        own_noise_floor: float = 0.0,  # [privacy] own_noise_multiplier: decline tasks adding less (0 = off)
        max_task_s: float = DEVICE_MAX_TASK_S,  # stop training any one task after this, whatever its deadline
        max_pace_s: float = 86400.0,  # check in at least this often, whatever a Pace says (seconds)
        max_pending: int = 16,  # updates kept unacknowledged, at most: past it, new tasks are declined
        upload_link=None,  # an upload_margin.UploadLink ([agent] upload_latency_s, upload_bytes_per_s); None: defaults
    ):
        self.runtime = runtime
        self.transport = transport
        self.clock = clock or SystemClock()
        self.max_message_bytes = max_message_bytes
        self.home = Path(runtime.state_root) / runtime.device_id
        self.checkin_s = checkin_s
        self.max_task_s = max_task_s  # seconds
        self.max_pace_s = max_pace_s
        self.max_pending = max_pending
        self.journal = DeviceJournal(self.home, max_message_bytes, self.clock)
        # Both publish through self._publish at call time: the simulator holds answers by swapping it.
        self.uplink = Uplink(self.device_id, self.journal, lambda *a: self._publish(*a), republish_s,
                             pending_max_age_s, upload_link, self.home / UPLINK_RATE_FILE)
        self.delivery = ModelDelivery(runtime, transport, self._publish,
                                      Path(artifacts_dir) if artifacts_dir else self.home / ARTIFACTS_DIR,
                                      max_message_bytes, fetch_timeout_s, model_wait_s)
        # Secure-aggregation rounds (their own four stages; secagg_participant.py), under the
        # same deadline, upload margin and time cap as a plain task (secagg_intake.py).
        self.secagg = SecAggParticipant(runtime, lambda m: self._publish("update", encode_message(m)),
                                        identity_private=secagg_identity, directory=secagg_directory,
                                        own_noise_floor=own_noise_floor)
        self.secagg_intake = SecAggIntake(self.secagg, self.delivery, self.uplink, self.clock, max_task_s)
        self.own_noise_floor = own_noise_floor
        self.tasks: dict[str, TaskState] = {}  # task_id -> state
        self._received: dict[str, float] = {}  # task_id -> clock time it arrived, until it trains or is declined
        self.evals = EvalAnswers(runtime, clock=self.clock, refit_s=min(EVAL_REFIT_S, max_task_s))  # once each
        self.announcement: Announcement | None = None
        self.next_checkin = float("inf")
        self.started = False
        self.journal.recover()  # a crash between staging a task's state and keeping its update: finish or undo it

    @property
    def device_id(self) -> str:
        return self.runtime.device_id

    @property
    def pending(self):
        """Updates kept until acknowledged (PendingUploads)."""
        return self.journal.pending

    @staticmethod
    def last_will(device_id: str) -> Message:
        """The Status the broker publishes (retained) if this device vanishes."""
        return Message(device_topic(device_id, "status"), encode_message(Status(device_id, False, "link lost")),
                       retain=True)

    def start(self) -> None:
        for channel in ("task", "ack", "artifact"):
            self.transport.subscribe(device_topic(self.device_id, channel))
        self.transport.subscribe(ANNOUNCE_TOPIC)
        self._announce_online()
        self.republish_pending()  # left over from before a restart, ahead of new work
        for decline in interrupted(self.journal, self.tasks, self.device_id):  # unanswered.py
            self.uplink.send_decline(decline)
        self.check_in()
        self.started = True

    def on_reconnect(self) -> None:
        """The link came back: the broker may have lost anything in flight, so resend."""
        self._announce_online()  # the Last Will left "offline" retained
        self.uplink.reconnected(self.clock.now())
        self.republish_pending()
        self.delivery.on_reconnect()
        self.check_in()

    def check_in(self) -> None:
        self._publish("checkin", encode_message(self.runtime.check_in()))
        self.next_checkin = self.clock.now() + self.checkin_s

    def check_in_soon(self) -> None:
        """Check in at the next tick, whatever Pace said (any thread may call it): new data (a
        SIGHUP reload) may un-park a device the coordinator left out for bad_dataset."""
        self.next_checkin = float("-inf")

    def tick(self) -> None:
        """Time-driven work: periodic check-in, resending unacknowledged updates, fetch timeouts."""
        now = self.clock.now()
        if now >= self.next_checkin:
            self.check_in()
        if self.uplink.resend_due(now):
            self.republish_pending()
        for task, refused in self.delivery.timeouts(now):
            self._refuse(task, refused)

    def poll(self, timeout: float | None = 0.0) -> bool:
        """Handle at most one incoming message; True if one was handled."""
        msg = self.transport.receive(timeout)
        if msg is None:
            return False
        try:
            message = decode_message(msg.payload, max_bytes=self.max_message_bytes)
        except CodecError as exc:
            log.warning("device %s dropped a bad message on %s: %s (%s)", self.device_id, msg.topic, exc.reason, exc)
            self._decline_unreadable(msg, exc)
            return True
        if msg.retain and device_of(msg.topic):  # a coordinator never retains these: a stale Pace or task
            log.warning("device %s ignored a retained %s on %s", self.device_id, type(message).__name__, msg.topic)
        elif isinstance(message, Announcement) and msg.topic == ANNOUNCE_TOPIC:
            before = self.announcement.session if self.announcement else None
            self.announcement = message
            remember_announced(self.runtime.announced, message.model_id, message.model_version)  # for keep_global
            if not msg.retain and message.session != before:
                self.check_in()  # a coordinator (re)started: it may have missed our last check-in
        elif isinstance(message, ModelPart) and topic_matches(MODEL_PARTS_FILTER, msg.topic):
            for task in self.delivery.on_part(message):
                self._train(task)
        elif isinstance(message, SECAGG_REQUESTS) and msg.topic == device_topic(self.device_id, "task"):
            self.secagg_intake.on_message(message)
        elif getattr(message, "device_id", None) != self.device_id and not isinstance(message, ArtifactFile):
            log.warning("device %s ignored %s addressed to someone else on %s", self.device_id, type(message).__name__,
                        msg.topic)
        elif isinstance(message, TrainTask):
            self._on_task(message)
        elif isinstance(message, EvalTask):
            self._on_eval(message)
        elif isinstance(message, Ack):
            self._on_ack(message)
        elif isinstance(message, Pace):
            # The wire allows 1e9 s (31 years): a device told that never checked in again.
            self.next_checkin = self.clock.now() + min(max(0.0, message.retry_after_s), self.max_pace_s)
        elif isinstance(message, ArtifactFile) and msg.topic == device_topic(self.device_id, "artifact"):
            ready, refused = self.delivery.on_artifact(message)
            for task, why in refused:
                self._refuse(task, why)
            for task in ready:
                if not self.secagg_intake.on_model(task):
                    self._run_task(task)
        else:
            log.warning("device %s ignored unexpected %s on %s", self.device_id, type(message).__name__, msg.topic)
        return True

    def republish_pending(self) -> int:
        """Send every unacknowledged update again (the broker is not a durable store)."""
        return self.uplink.resend_all(self.clock.now())

    # ------------------------------------------------------------------ the task table's shell

    def _step(self, task: TrainTask, event) -> None:
        """Feed one event to the task's table and run the actions it returns."""
        state = self.tasks.get(task.task_id, TaskState.IDLE)
        try:
            state, actions = on_event(state, event)
        except InvalidTransition as exc:  # e.g. a second copy of a task's inputs: it trains once
            log.warning("device %s: task %s: %s; ignored", self.device_id, task.task_id, exc)
            return
        self.tasks[task.task_id] = state
        forget_answered(self.tasks)
        for action in actions:
            if isinstance(action, FetchInputs):
                ready = self.delivery.model_ready(task, self.clock.now())
                if isinstance(ready, Refused):
                    self._step(task, ready)
                elif ready:
                    self._run_task(task)
            elif isinstance(action, Train):
                self._train_now(task, action.deadline_at)
            elif isinstance(action, SendDecline):
                self._received.pop(task.task_id, None)
                self.uplink.send_decline(Decline(self.device_id, task.round_id, task.task_id, action.reason,
                                                 action.detail, action.stage))
            elif isinstance(action, SendUpdate):
                self.uplink.send_update(self.journal.kept(action.update_id), self.clock.now())
            else:
                raise TypeError(f"unknown task action {action!r}")

    def _on_task(self, task: TrainTask) -> None:
        if task.shard >= 0:  # a copy naming another shard: the leader moved us (uplink.retarget)
            self.uplink.retarget(task.task_id, task.shard)
        if task.task_id in self.tasks or task.task_id in self.journal:
            self._answer_again(task)
            return
        self.tasks[task.task_id] = TaskState.IDLE
        self._received[task.task_id] = self.clock.now()  # task.deadline_s counts from here
        self.journal.received(task.task_id, task.round_id)
        if len(self.pending) >= self.max_pending:  # each is kept on disk until its Ack (or a week)
            self._step(task, Refused(UPLINK_BACKLOG, f"{len(self.pending)} updates wait for an Ack; this device "
                                     f"keeps at most {self.max_pending}"))
            return
        if self.own_noise_floor > 0:  # a plain task (or central DP) adds no noise on the device
            self._step(task, Refused(NOISE_BELOW_FLOOR, "the task adds no noise on the device; this device's "
                                     f"floor is σγ/S >= {self.own_noise_floor:g} (distributed DP)"))
            return
        self._step(task, Received(task.model_id))

    def _refuse(self, task: TrainTask, why: Refused) -> None:
        """A task whose model could not be had: declined, by the task table or for a secure round."""
        if not self.secagg_intake.refuse(task, why):
            self._step(task, why)

    def _on_eval(self, task: EvalTask | EvalReport) -> None:
        """Answer at once; a task the wire refused comes as its refusal (unanswered.py)."""
        self.uplink.blocked()  # an evaluation (a head refit) blocks the loop like training
        self.evals.answer(task, lambda report: self._publish("update", encode_message(report)))

    def _answer_again(self, task: TrainTask) -> None:
        """A task seen before came again (QoS 1 redelivery, or the coordinator resending after a
        loss): repeat the answer, never the training."""
        if self.delivery.waits_for_parts(task.task_id):
            if self.delivery.take_inline(task):
                self._received[task.task_id] = self.clock.now()  # its deadline_s counts from now
                self._train(task)  # the inline copy we asked for
            return
        if not self.uplink.repeat_decline(task.task_id) and not self.delivery.request_again(task):
            self.republish_pending()
        log.info("device %s: task %s already seen; answered again", self.device_id, task.task_id)

    def _run_task(self, task: TrainTask) -> None:
        """Train once the task's params are at hand: inline, or from the round's model parts."""
        filled = self.delivery.resolve_params(task, self.clock.now())
        if isinstance(filled, Refused):
            self._step(task, filled)
        elif filled is not None:
            self._train(filled)

    def _train(self, task: TrainTask) -> None:
        """Inputs at hand: the table trains it until its deadline less the upload margin, or declines it."""
        now, margin_s = self.clock.now(), self.uplink.margin_s(task)
        self._step(task, InputsReady(now, self._received.pop(task.task_id, now), task.deadline_s, margin_s))

    def _train_now(self, task: TrainTask, deadline_at: float) -> None:
        # Between training steps: a straggler stops, not just arrives late; and no task trains
        # past the device's own cap, whatever deadline it came with.
        past_deadline = stop_check(self.clock, deadline_at, self.max_task_s)
        self.uplink.blocked()  # an Ack queued behind the training is no upload time (uplink_rate.py)
        # The runtime keeps the update in the journal before its state moves (journal.record).
        reply = self.runtime.handle_task(task, past_deadline, self.journal)
        if isinstance(reply, Decline):
            self._step(task, Failed(reply.reason, reply.detail, reply.stage, aborted=reply.stage == "during"))
            if reply.reason == BAD_STATE:  # its check-ins say so now (state_health.py): tell the coordinator
                self.check_in()
            return
        assert isinstance(reply, Update)
        if self.journal.kept(reply.update_id) is None:  # a runtime that keeps nothing itself
            try:
                self.journal.keep(reply)
            except PayloadTooLarge as exc:
                self._step(task, Failed(exc.reason, str(exc), "during", aborted=False))
                return
        log.info("device %s: round %d task %s: %d steps, loss %.4g, %d bytes up", self.device_id, task.round_id,
                 task.task_id, reply.metrics.get("steps", 0), reply.metrics.get("loss", float("nan")),
                 len(self.journal.kept(reply.update_id) or b""))
        self._step(task, Trained(reply.update_id))

    def _on_ack(self, ack: Ack) -> None:
        if not self.journal.acknowledged(ack.task_id, ack.update_id,
                                         ack.round_id if ack.update_id in self.pending else None):
            return  # it names another task than its update's: nothing of either changes
        self.uplink.acked(self.clock.now(), ack.update_id)  # times the link (uplink_rate.py)
        on_ack = getattr(self.runtime, "on_ack", None)
        if on_ack is not None:
            on_ack(ack)  # e.g. SCAFFOLD puts its control variate back when an upload was refused
        if self.tasks.get(ack.task_id) == TaskState.UPLOADING:
            self.tasks[ack.task_id], _ = on_event(TaskState.UPLOADING, Acked(ack.accepted))
        if not ack.accepted:
            log.info("device %s: update %s rejected: %s", self.device_id, ack.update_id, ack.reason)

    def _decline_unreadable(self, msg: Message, exc: CodecError) -> None:
        """A refused task frame naming this device: declined by the codec's reason (unanswered.py)."""
        on_task = not msg.retain and msg.topic == device_topic(self.device_id, "task")
        decline = unreadable_task(msg.payload, exc, self.device_id, self.max_message_bytes) if on_task else None
        if isinstance(decline, EvalReport):
            self._on_eval(decline)
        elif decline is not None:
            known = any(decline.task_id in k for k in (self.tasks, self.journal, self.secagg.sessions,
                                                       self.secagg_intake.fetching))
            answer_unreadable(decline, known, self.journal, self.uplink)

    # ------------------------------------------------------------------ link

    def _announce_online(self) -> None:
        self.transport.publish(device_topic(self.device_id, "status"), encode_message(Status(self.device_id, True)),
                               qos=1, retain=True)

    def _publish(self, channel: str, payload: bytes, shard: int = -1) -> None:
        topic = shard_update_topic(shard, self.device_id) if shard >= 0 else device_topic(self.device_id, channel)
        self.transport.publish(topic, payload, qos=1)
