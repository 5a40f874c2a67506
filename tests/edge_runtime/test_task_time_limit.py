"""A device stops training any one task after its own max_task_s (work_limits.py), whatever
deadline and epochs the task names: the wire allows deadline_s up to 1e9 s and a million
epochs of batch size 1, which kept a device training for weeks."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, Update
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec, SecAggTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.work_limits import EVAL_REFIT_S, TIME_LIMIT
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


class _CountingBackend:
    """A stand-in trainer: loss 1 + step / 1000 (fast: the test is about memory, not maths)."""

    name = "counting"

    def __init__(self):
        self.count = 0

    def start(self, params, opt_state, anchor, correction=None):
        self.params = dict(params)

    def step(self, z, y, hyper):
        self.count += 1
        return 1.0 + self.count / 1000

    def current(self):
        return self.params, {}


def _traced_peak(examples: int, epochs: int = 10):
    """(peak bytes traced while train_locally runs epochs x examples steps of batch size 1, its result)."""
    import tracemalloc
    from types import SimpleNamespace

    import numpy as np

    from fedge.edge_runtime.local_training import train_locally

    z, y = np.zeros((examples, 2), np.float32), np.zeros(examples, np.int64)
    hyper = TaskHyper(epochs=epochs, batch_size=1, lr=0.1, divergence_factor=0.0)
    tracemalloc.start()
    try:
        result = train_locally(_CountingBackend(), SimpleNamespace(by_role=lambda role: []), {}, {}, None, z, y, hyper,
                               np.random.default_rng(0))
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_training_memory_does_not_grow_with_its_steps():
    """Every batch loss was kept in a list until training ended: 32 bytes a step, and the time
    cap lets a small head train millions of steps (hundreds of MB on a Pi). 10 epochs of 4,000
    steps may cost no more than 10 of 40 (the list cost 1.2 MB more); what stays is one mean
    per epoch, which the wire bounds (epochs <= 1e6). Oracle for the means: the losses are
    1 + k / 1000, k = 1..K."""
    small, _ = _traced_peak(40)
    large, result = _traced_peak(4_000)
    assert large - small < 256 << 10, f"{(large - small) >> 10} KiB more for 100x the steps"
    losses = [1 + k / 1000 for k in range(1, 40_001)]
    assert result.steps == 40_000 and abs(result.mean_loss - sum(losses) / len(losses)) < 1e-9
    expected = [sum(losses[i:i + 4_000]) / 4_000 for i in range(0, 40_000, 4_000)]
    assert max(abs(a - b) for a, b in zip(result.epoch_losses, expected, strict=True)) < 1e-9


@pytest.mark.parametrize("max_task_s", [1.0, 1e6])
def test_an_evaluations_head_refit_runs_on_the_agents_clock_under_the_smaller_cap(model, tmp_path, max_task_s):
    """The refit at an evaluation (head_refit.py) is a task's worth of training: the agent
    gives it its own clock and the smaller of EVAL_REFIT_S and max_task_s (the limit itself is
    tested in test_head_refit_limits.py)."""
    agent, _ = one_device(model, tmp_path, clock=TickingClock(), max_task_s=max_task_s)
    assert agent.evals.clock is agent.clock and agent.evals.refit_s == min(EVAL_REFIT_S, max_task_s)
