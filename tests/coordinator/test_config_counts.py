"""Counts in the coordinator's config past any fleet are refused when the config loads, by name
(coordinator/limits.py). async.buffer_size = 10**30 once loaded and then ended the first buffer
in an OverflowError from SQLite; cc_iterations = 10**30 would run centered clipping's loop for
good inside one round; a negative secure_aggregation.sigma loaded without a word."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config, task_seed
from fedge.coordinator.limits import MAX_CC_ITERATIONS, MAX_FLEET
from fedge.coordinator.secagg.shell import SecAggShell
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import TrainTask
from fedge.edge_runtime.kernel.secagg.messages import KeyDirectory, SecAggSpec

HUGE = 10**30
# What a table's keys need to be read at all (coordinator/unread_keys.py refuses them otherwise)
READ_UNDER = {"coordinator.async": 'mode = "async"\n', "coordinator.robust": 'aggregator = "centered_clipping"\n'}
# A switched table's settings load only beside its `enabled` (off here: the bounds are checked either way)
IN_TABLE = {"coordinator.secure_aggregation": "enabled = false\n"}


def _load(tmp_path, table: str, key: str, value):
    path = tmp_path / "c.toml"
    head = "[coordinator]\n" + READ_UNDER.get(table, "") + ("" if table == "coordinator" else f"[{table}]\n") \
        + IN_TABLE.get(table, "")
    path.write_text(f"{head}{key} = {value}\n")
    return load_coordinator_config(path)


@pytest.mark.parametrize(("table", "key", "largest"), [
    ("coordinator", "clients_per_round", MAX_FLEET),
    ("coordinator.async", "buffer_size", MAX_FLEET),
    ("coordinator.async", "concurrency", MAX_FLEET),
    ("coordinator.robust", "cc_iterations", MAX_CC_ITERATIONS),
    ("coordinator.secure_aggregation", "threshold", MAX_FLEET),
    ("coordinator.secure_aggregation", "mask_min", MAX_FLEET),
    ("coordinator.secure_aggregation", "sigma", 128),
    ("coordinator.secure_aggregation", "eta", 128),
])
def test_a_count_past_its_bound_is_refused_by_name_and_the_bound_itself_loads(tmp_path, table, key, largest):
    for bad in (largest + 1, HUGE):
        with pytest.raises(ConfigError, match=key):
            _load(tmp_path, table, key, bad)
    if key in ("threshold", "mask_min"):  # legal alone only with a graph they fit: the bound check comes first
        return
    _load(tmp_path, table, key, largest)


@pytest.mark.parametrize("key", ["sigma", "eta"])
def test_secure_aggregation_security_bits_must_be_positive(tmp_path, key):
    for bad in (0, -1):
        with pytest.raises(ConfigError, match=key):
            _load(tmp_path, "coordinator.secure_aggregation", key, bad)


def _range(cls, name: str):
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata["range"]


@pytest.mark.parametrize("round_id", [0, 10**17])
def test_every_seed_derived_from_the_largest_accepted_seed_fits_the_wire(tmp_path, round_id):
    """The coordinator's seed reaches the wire as each task's seed (config.task_seed) and, in a
    secure round, as the neighbour graph's seed (twice that) and the rotation's (one more). The
    bound seed <= 2**63 // 1,000,003 covered only the first: seeds past about 4.6e12 loaded, and
    every secure round was abandoned at its first stage, its SecAggTask refused by the encoder
    (rotation_seed 18446744073708200929 at the old bound, round 0)."""
    largest = _range(CoordinatorConfig, "seed")[1]
    cfg = _load(tmp_path, "coordinator", "seed", largest)
    with pytest.raises(ConfigError, match="seed"):
        _load(tmp_path, "coordinator", "seed", largest + 1)
    rnd = SimpleNamespace(ctx=SimpleNamespace(round_id=round_id))
    graph = SecAggShell.graph_seed(SimpleNamespace(config=cfg), rnd)
    for value, (cls, name) in ((task_seed(cfg.seed, round_id), (TrainTask, "seed")),
                               (graph, (KeyDirectory, "graph_seed")), (graph + 1, (SecAggSpec, "rotation_seed"))):
        low, high = _range(cls, name)
        assert low <= value <= high, f"{cls.__name__}.{name} = {value} at round {round_id}"
