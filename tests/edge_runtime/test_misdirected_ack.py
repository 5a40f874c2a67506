"""An Ack naming a kept update under another task id (a buggy or replaying coordinator) recorded
that other task as answered and dropped the update: when the task came, the device took it for a
copy, neither trained nor answered it, and its round waited for the deadline. The Ack is ignored
now; an Ack naming the update's own task still clears it."""

from __future__ import annotations

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Ack, CompressionSpec, TaskHyper, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump
from tests.tiny_model import build_tiny_model


def _task(model, task_id: str) -> TrainTask:
    _, manifest, runtime = model
    return TrainTask(3, task_id, DEVICE, manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                     TaskHyper(epochs=1, batch_size=8), CompressionSpec(quant_bits=32))


def test_an_ack_naming_another_task_changes_nothing(tmp_path):
    model = build_tiny_model(tmp_path / "tiny")
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())

    def send(channel, message) -> list:
        coord.publish(device_topic(DEVICE, channel), encode_message(message))
        return [m for m in pump(agent, coord) if isinstance(m, Update)]

    (first,) = send("task", _task(model, "t1"))
    assert send("ack", Ack(DEVICE, 3, "t2", first.update_id, True)) == []
    assert len(agent.pending) == 1  # still kept, still resent
    (second,) = send("task", _task(model, "t2"))  # a task it never saw: trained and answered
    assert second.task_id == "t2" and second.update_id != first.update_id
    send("ack", Ack(DEVICE, 3, "t1", first.update_id, True))
    assert [item.update_id for item in agent.pending.items()] == [second.update_id]
