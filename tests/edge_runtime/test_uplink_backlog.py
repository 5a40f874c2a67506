"""What a flood of tasks can make a device keep: at most max_pending updates waiting for an
Ack (then tasks are declined as uplink_backlog), and at most TASKS_KEPT task states. Both grew
without bound: a coordinator that never acknowledged got every task trained and every update
kept on disk for a week, and every task id stayed in DeviceAgent.tasks for the process's life."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Ack, CompressionSpec, Decline, TaskHyper, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.work_limits import TASKS_KEPT, UPLINK_BACKLOG
from tests.edge_runtime.one_device import DEVICE, one_device, pump, reply_to
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _task(model, task_id: str, model_id: str | None = None) -> TrainTask:
    _, manifest, runtime = model
    return TrainTask(1, task_id, DEVICE, model_id or manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=1, batch_size=8, lr=0.05), CompressionSpec(quant_bits=32))


def test_a_coordinator_that_never_acks_gets_a_bounded_backlog(model, tmp_path):
    agent, coord = one_device(model, tmp_path, clock=ManualClock(), max_pending=4)
    replies = [reply_to(agent, coord, _task(model, f"t{i}")) for i in range(6)]
    assert [type(r).__name__ for r in replies] == ["Update"] * 4 + ["Decline"] * 2
    assert (replies[-1].reason, replies[-1].stage) == (UPLINK_BACKLOG, "before")
    assert len(agent.pending) == 4 and len(list((tmp_path / DEVICE / "pending").iterdir())) == 4
    first = replies[0]
    coord.publish(device_topic(DEVICE, "ack"), encode_message(Ack(DEVICE, 1, first.task_id, first.update_id, True)))
    pump(agent, coord)
    assert isinstance(reply_to(agent, coord, _task(model, "after-ack")), Update)


def test_the_task_table_forgets_answered_tasks_past_its_bound(model, tmp_path):
    agent, coord = one_device(model, tmp_path, clock=ManualClock())
    for i in range(TASKS_KEPT + 300):  # a model the device lacks, with no manifest hash: declined at once
        coord.publish(device_topic(DEVICE, "task"), encode_message(_task(model, f"t{i}", "absent")))
        pump(agent, coord)
    assert len(agent.tasks) == TASKS_KEPT
    assert f"t{TASKS_KEPT + 299}" in agent.tasks and "t0" not in agent.tasks
    reply = reply_to(agent, coord, _task(model, f"t{TASKS_KEPT + 299}"))  # a repeat: the same Decline again
    assert isinstance(reply, Decline) and reply.reason == "artifact"
