"""A device stops training any one task after its own max_task_s (work_limits.py), whatever
deadline and epochs the task names: the wire allows deadline_s up to 1e9 s and a million
epochs of batch size 1, which kept a device training for weeks."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, Update
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec, SecAggTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.work_limits import TIME_LIMIT
from tests.edge_runtime.one_device import TickingClock, one_device, reply_to
from tests.tiny_model import build_tiny_model

# 1000 epochs of 40 one-example steps: 40,000 steps, a few seconds here without the cap (so a
# re-planted bug fails instead of hanging), days of a Pi with a real model.
ENDLESS = TaskHyper(epochs=1000, batch_size=1, lr=1e-6, divergence_factor=0.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _task(model, **kw) -> TrainTask:
    _, manifest, runtime = model
    fields = dict(hyper=ENDLESS, compression=CompressionSpec(quant_bits=32), deadline_s=1e9)
    return TrainTask(1, "t1", "devA", manifest.model_id, 1, encode_dense(runtime.initial("shared")),
                     **{**fields, **kw})


def test_a_task_with_a_huge_deadline_stops_at_the_device_cap(model, tmp_path):
    agent, coord = one_device(model, tmp_path, clock=TickingClock(), max_task_s=1.0)
    reply = reply_to(agent, coord, _task(model))
    assert isinstance(reply, Decline), reply
    assert (reply.reason, reply.stage) == (f"aborted:{TIME_LIMIT}", "during")
    assert "after 99 steps" in reply.detail or "after 100 steps" in reply.detail, reply.detail
    assert len(agent.pending) == 0


def test_the_task_deadline_still_stops_it_first_when_shorter(model, tmp_path):
    agent, coord = one_device(model, tmp_path, clock=TickingClock(), max_task_s=1.0)
    reply = reply_to(agent, coord, _task(model, deadline_s=0.5))
    assert (reply.reason, reply.stage) == ("aborted:deadline", "during")


def test_a_task_within_the_cap_trains(model, tmp_path):
    agent, coord = one_device(model, tmp_path, clock=TickingClock(), max_task_s=1.0)
    reply = reply_to(agent, coord, _task(model, hyper=TaskHyper(epochs=1, batch_size=8, lr=0.05)))
    assert isinstance(reply, Update) and reply.metrics["steps"] == 5


def test_a_secure_round_trains_under_the_same_cap(model, tmp_path):
    """The secure-aggregation participant trained with no deadline check at all."""
    agent, coord = one_device(model, tmp_path, clock=TickingClock(), max_task_s=1.0)
    spec = SecAggSpec(bits=8, field_bits=18, clip_range=0.02, rotation_seed=9)
    reply = reply_to(agent, coord, SecAggTask(_task(model), spec, sharing=2))
    assert isinstance(reply, Decline), reply
    assert reply.reason == f"aborted:{TIME_LIMIT}"
