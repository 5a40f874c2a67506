"""What a restarted coordinator refuses (coordinator/restart.py), found blind by
benchmarks/results/2026-12-06-mutation6-async: an open round based on another model version than
the stored one (commit_round closes a round and commits its model in one transaction, so only a
file changed outside fedge holds both; replayed onto the other model, its deltas would step the
wrong params), and a strategy array of the right shape but another dtype than its init made."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from fedge.coordinator.restart import check_arrays, resume
from fedge.coordinator.stored import StoredRound
from fedge.coordinator.strategies import ServerState
from fedge.edge_runtime.kernel.errors import ConfigError


def _make_round(machine, tasks, started, plan):
    return SimpleNamespace(machine=machine, tasks=tasks, started=started)


def test_an_open_round_on_another_model_version_is_refused_by_name():
    stored = StoredRound(7, 3, ("a", "b"), {"a": "ta", "b": "tb"}, 2, 1, 100.0, 700.0)
    for version in (2, 4):
        with pytest.raises(ConfigError, match="state.db: open round 7 was based on version 3, the stored model is "
                                              f"{version}"):
            resume(stored, version, 0.0, 150.0, _make_round, "state.db")
    rnd = resume(stored, 3, 10.0, 150.0, _make_round, "state.db")  # on its own version it goes on
    assert (rnd.machine.deadline, rnd.started, rnd.tasks) == (10.0 + 700.0 - 150.0, 10.0 - 50.0, stored.tasks)


def test_a_strategy_array_in_another_dtype_of_the_same_shape_is_refused_by_name():
    like = np.zeros((2, 3), np.float32)
    initial = ServerState(0, {"w": like}, {"momentum": {"w": like}})
    check_arrays("state.db", ServerState(4, {"w": like}, {"momentum": {"w": like + 1}}), initial)  # as written
    wider = ServerState(4, {"w": like}, {"momentum": {"w": np.ones((2, 3), np.float64)}})
    with pytest.raises(StoreCorrupt, match=r"state.db: tensors of version 4: extra momentum 'w' is float64 \(2, 3\), "
                                           r"not float32 \(2, 3\)"):
        check_arrays("state.db", wider, initial)
