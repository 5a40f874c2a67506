"""The device agent's shell and loop at the edges the mutation7-agent audit found untested: the
task table's state after an abort, a task's deadline counted afresh from the inline copy the
device asked for, and the loop telling the agent of each reconnect once."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.edge_runtime.kernel.protocol import (
    CompressionSpec,
    Decline,
    FetchRequest,
    TaskHyper,
    TrainTask,
    Update,
    device_topic,
)
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.loop import AgentLoop
from fedge.edge_runtime.task import TaskState
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump, reply_to
from tests.tiny_model import CLASSES, build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _task(model, **kw) -> TrainTask:
    _, manifest, runtime = model
    fields = dict(round_id=1, task_id="t1", device_id=DEVICE, model_id=manifest.model_id, model_version=1,
                  params=encode_dense(runtime.initial("shared")), hyper=TaskHyper(epochs=1, batch_size=8, lr=0.05),
                  compression=CompressionSpec(quant_bits=32))
    return TrainTask(**{**fields, **kw})


def test_a_task_stopped_mid_training_ends_aborted_and_one_refused_before_declined(model, tmp_path):
    # The diagram in task.py: training --abort--> aborted; a refusal before training --decline--> declined.
    agent, coord = one_device(model, tmp_path, clock=TickingClock())
    endless = TaskHyper(epochs=1000, batch_size=1, lr=1e-6, divergence_factor=0.0)
    # 0.5 s: the upload margin takes up to half of it (upload_margin.py), and of 0.05 s the clock's own
    # 10 ms readings spent that half before training began (declined no_time_to_upload, never trained)
    reply = reply_to(agent, coord, _task(model, hyper=endless, deadline_s=0.5))
    assert (reply.reason, reply.stage) == ("aborted:deadline", "during")
    assert agent.tasks["t1"] is TaskState.ABORTED
    reply = reply_to(agent, coord, _task(model, task_id="t2", model_id="absent"))
    assert isinstance(reply, Decline) and reply.stage == "before"
    assert agent.tasks["t2"] is TaskState.DECLINED


def test_the_inline_copy_a_device_asked_for_gets_its_deadline_counted_from_its_arrival(model, tmp_path):
    # A round's model parts never come: past model_wait_s (5 s) the device asks for the task
    # inline. The copy comes at 12 s, past the 10 s deadline counted from the first arrival;
    # counted from the copy's arrival (agent._answer_again) it has all its 10 s, and trains.
    clock = ManualClock()
    agent, coord = one_device(model, tmp_path, channels=("update", "fetch"), clock=clock, model_wait_s=5.0)
    round_task = _task(model, params=b"", round_model_sha256="ab" * 32, deadline_s=10.0)
    coord.publish(device_topic(DEVICE, "task"), encode_message(round_task))
    assert pump(agent, coord) == []
    clock.advance(6.0)
    asked = pump(agent, coord)
    assert [m.task_id for m in asked if isinstance(m, FetchRequest)] == ["t1"]
    clock.advance(6.0)
    reply = reply_to(agent, coord, _task(model, deadline_s=10.0))
    assert isinstance(reply, Update), reply


class _Transport:
    connection_count = 1


class _Agent:
    """Polls, ticks and reconnects counted; the link drops and comes back at polls 2 and 4."""

    device_id, started = "pi-a", True

    def __init__(self):
        self.transport, self.polls, self.ticks, self.reconnected_at = _Transport(), 0, 0, []
        self.loop: AgentLoop | None = None

    def poll(self, timeout):
        self.polls += 1
        if self.polls in (2, 4):
            self.transport.connection_count += 1

    def on_reconnect(self):
        self.reconnected_at.append(self.polls)

    def tick(self):
        self.ticks += 1
        if self.ticks == 6:
            self.loop.stop()


def test_the_loop_tells_the_agent_of_each_reconnect_once():
    agent = _Agent()
    agent.loop = AgentLoop(agent, poll_s=0.0)
    agent.loop.run()
    assert (agent.reconnected_at, agent.ticks) == ([2, 4], 6)



def test_a_kept_residual_of_other_shapes_is_dropped_and_the_task_trains(model, tmp_path):
    # device._fitting: state of the right names but other shapes (damage) starts afresh; taken
    # as it was, error feedback added it to the delta and a ValueError escaped the task unanswered.
    agent, coord = one_device(model, tmp_path, clock=ManualClock())
    _, manifest, _ = model
    runtime = agent.runtime
    shared = runtime.model(manifest.model_id).initial("shared")
    runtime.store(runtime.model(manifest.model_id)).save_residual({k: np.ones((2, 3, 5), np.float32) for k in shared})
    reply = reply_to(agent, coord, _task(model))
    assert isinstance(reply, Update), reply


@pytest.mark.parametrize("top, refused", [(CLASSES - 1, False), (CLASSES, True)])
def test_a_label_equal_to_the_models_class_count_is_refused_by_name(model, top, refused):
    # Classes are 0 .. num_classes - 1 (model_runtime.check_labels); ONNX Runtime fails deep in a step otherwise.
    runtime, y = model[2], np.array([0, top])
    if refused:
        with pytest.raises(DatasetError, match=f"label {CLASSES} is outside model .*'s {CLASSES} classes"):
            runtime.check_labels(y, "y_train")
    else:
        assert runtime.check_labels(y, "y_train") is None
