"""The round model's assembly and waits at their edges (mutation7-kernel): parts of exactly
max_bytes assemble; a wait is overdue after wait_s, not at it; a task taken from a wait that
holds no other leaves no wait behind (nothing listens for its parts any more)."""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import RoundModel, TrainTask
from fedge.edge_runtime.kernel.round_model import ModelAssembly, ModelWaits, split_round_model

MODEL = RoundModel("mlp", 7, 12, params=np.random.default_rng(1).bytes(3000), correction=b"")


def _task(task_id: str, sha: str) -> TrainTask:
    return TrainTask(round_id=12, task_id=task_id, device_id="d", model_id="mlp", model_version=7, params=b"",
                     round_model_sha256=sha)


def test_a_model_of_exactly_max_bytes_assembles():
    size = len(encode_message(MODEL))
    sha, parts = split_round_model(MODEL, 1000)
    exact = ModelAssembly(sha, size)
    got = [exact.accept(p) for p in parts]
    assert got[-1] == MODEL and exact.size == size


def test_a_wait_is_overdue_after_wait_s_not_at_it():
    sha, _ = split_round_model(MODEL, 1000)
    waits = ModelWaits(1 << 20)
    assert waits.resolve(_task("a", sha), 100.0) is None
    assert waits.overdue(115.0, 15.0) == [] and waits.listening
    assert [t.task_id for t in waits.overdue(115.5, 15.0)] == ["a"] and not waits.listening


def test_taking_the_last_task_of_a_wait_forgets_the_wait():
    sha, parts = split_round_model(MODEL, 1000)
    waits = ModelWaits(1 << 20)
    waits.resolve(_task("a", sha), 0.0)
    assert waits.listening and waits.awaits(sha)
    assert waits.take("a")
    assert not waits.listening and not waits.awaits(sha)  # no subscription kept for a model nobody awaits
    assert waits.on_part(parts[0]) == ([], [], "") and waits.held() == 0
