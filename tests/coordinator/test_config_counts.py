"""Counts in the coordinator's config past any fleet are refused when the config loads, by name
(coordinator/limits.py). async.buffer_size = 10**30 once loaded and then ended the first buffer
in an OverflowError from SQLite; cc_iterations = 10**30 would run centered clipping's loop for
good inside one round; a negative secure_aggregation.sigma loaded without a word."""

from __future__ import annotations

import pytest

from fedge.coordinator.config import load_coordinator_config
from fedge.coordinator.limits import MAX_CC_ITERATIONS, MAX_FLEET
from fedge.edge_runtime.kernel.errors import ConfigError

HUGE = 10**30


def _load(tmp_path, table: str, key: str, value):
    path = tmp_path / "c.toml"
    head = "[coordinator]\n" + ("" if table == "coordinator" else f"[{table}]\n")
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
