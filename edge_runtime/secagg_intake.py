"""A secure round's requests on their way from the agent to the participant (secagg_participant.py).

A new SecAggTask's model is fetched first, as a plain task's (it waits here, not in the agent's
task table: the participant runs the round's stages), and its deadline_s counts from when it
arrived, as a plain task's does. Its training then stops the upload margin before that deadline
(upload_margin.py), by task.py's rule for plain tasks: inputs that come past the deadline are
declined as deadline_passed and inside the margin as no_time_to_upload, before training.

What must land by that deadline is the KeyAdvertisement the participant sends once trained: the
coordinator's first secure stage (advertise) closes at the round's deadline, counted from when it
sent the task, and a device whose advertisement comes later is not in the round's cohort (its
training thrown away). So the margin is latency_s + the advertisement's bytes (exact: a few
hundred) / the rate. The masked input, the bulky upload (field_bits per sent coordinate), goes two
stages later, in answer to the ShareDelivery, under that stage's own mask_deadline_s counted from
the stage's start: when training stops does not change when it lands. The work between the last
step and the advertisement's send (encoding the update, its residual saved, two key pairs, a
signature) is taken to fit in latency_s, as a plain update's encoding is.

A secure task the device declined (before training, or the participant's own declines) that comes
again (a QoS 1 redelivery, the coordinator resending) gets the same Decline again, as a plain task
does (agent._answer_again): it was treated as new, its deadline counted from the copy, and it
trained past the coordinator's deadline to be thrown away.
"""

from __future__ import annotations

from collections.abc import Callable

from .kernel.protocol import Decline, TrainTask
from .kernel.secagg.messages import SecAggTask
from .secagg_participant import SecAggParticipant
from .task import InputsReady, Refused, SendDecline, TaskState, on_event
from .upload_margin import advertisement_bytes
from .work_limits import stop_check


class SecAggIntake:
    def __init__(self, participant: SecAggParticipant, delivery, uplink, clock, max_task_s: float):
        """delivery: the agent's ModelDelivery; uplink: its Uplink (the margin, and blocked());
        max_task_s: the device's cap on any one task's training (work_limits.py)."""
        self.participant = participant
        self.delivery = delivery
        self.uplink = uplink
        self.clock = clock
        self.max_task_s = max_task_s  # seconds
        # task_id -> a secure round's task whose model is on its way, and the clock time it arrived
        self.fetching: dict[str, tuple[SecAggTask, float]] = {}
        self.train_until: dict[str, float] = {}  # task_id -> clock time its training stops, while it trains
        self._send = participant.publish  # every secure-round message leaves through it: declines are kept first
        participant.publish = self._publish
        participant.stop_check = self.stop_check  # its deadline counted from the task's arrival

    def on_message(self, message) -> None:
        """A secure round's message from the device's task topic."""
        if isinstance(message, SecAggTask) and self.uplink.repeat_decline(message.task.task_id):
            return  # answered again, never trained again
        if isinstance(message, SecAggTask) and message.task.task_id not in self.participant.sessions:
            task = message.task
            if task.task_id in self.fetching:
                self.delivery.request_again(task)  # a repeat while the model is on its way: our ask may be lost
                return
            now = self.clock.now()  # task.deadline_s counts from here
            ready = self.delivery.model_ready(task, now)
            if isinstance(ready, Refused):
                self._decline_before(task, ready.reason, ready.detail)
            elif ready:
                self._train(message, now)
            else:
                self.fetching[task.task_id] = (message, now)
            return
        self.uplink.blocked()  # a stage's work (keys, masking) blocks the agent's loop too
        self.participant.on_message(message)

    def on_model(self, task: TrainTask) -> bool:
        """The task's model is installed: True if it was a secure round's (now trained)."""
        fetched = self.fetching.pop(task.task_id, None)
        if fetched is not None:
            self._train(*fetched)
        return fetched is not None

    def refuse(self, task: TrainTask, why: Refused) -> bool:
        """A task whose model could not be had: True if it was a secure round's (now declined)."""
        if self.fetching.pop(task.task_id, None) is None:
            return False
        self._decline_before(task, why.reason, why.detail)
        return True

    def stop_check(self, task: TrainTask) -> Callable[[], str | None]:
        """What the participant's training asks between steps: the stop time _train set, and the cap."""
        return stop_check(self.clock, self.train_until[task.task_id], self.max_task_s)

    def _train(self, message: SecAggTask, received_at: float) -> None:
        """Inputs at hand: the participant trains until the deadline less the margin, or the task is
        declined before training (module docstring). received_at: the clock time the task arrived."""
        task, now = message.task, self.clock.now()
        signed = self.participant.identity_private is not None
        margin_s = self.uplink.margin_s(task, advertisement_bytes(task, self.participant.device_id, signed))
        _, (action,) = on_event(TaskState.ELIGIBLE,
                                InputsReady(now, received_at, task.deadline_s, margin_s))
        if isinstance(action, SendDecline):
            self._decline_before(task, action.reason, action.detail)
            return
        self.train_until[task.task_id] = action.deadline_at
        self.uplink.blocked()  # an Ack queued behind the training is no upload time (uplink_rate.py)
        try:
            self.participant.on_message(message)
        finally:
            del self.train_until[task.task_id]

    def _decline_before(self, task: TrainTask, reason: str, detail: str) -> None:
        """Straight out, as the participant's own declines go (its rounds are not in the task table
        or the journal)."""
        device_id = self.participant.device_id
        self._publish(Decline(device_id, task.round_id, task.task_id, reason, detail, "before"))

    def _publish(self, message) -> None:
        if isinstance(message, Decline):
            self.uplink.remember_decline(message)  # the one table of declines plain tasks use too
        self._send(message)
