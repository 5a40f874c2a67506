"""`[coordinator.async]` at its documented limits (coordinator/async_mode/config.py), found blind by
benchmarks/results/2026-12-06-mutation6-async: buffer_size and concurrency up to MAX_FLEET
inclusive, and each refusal by name at the smallest setting that triggers it."""

from __future__ import annotations

import pytest

from fedge.coordinator.async_mode.config import AsyncConfig, AsyncConflict
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.limits import MAX_FLEET
from fedge.edge_runtime.kernel.errors import ConfigError


@pytest.mark.parametrize("name", ["buffer_size", "concurrency"])
def test_buffer_size_and_concurrency_reach_max_fleet_and_stop_there(name):
    assert getattr(AsyncConfig(**{name: MAX_FLEET}), name) == MAX_FLEET
    assert getattr(AsyncConfig(**{name: 1}), name) == 1
    for bad in (0, MAX_FLEET + 1):
        with pytest.raises(ConfigError, match=f"async.{name}"):
            AsyncConfig(**{name: bad})


@pytest.mark.parametrize("changes, reason", [
    ({"state_dsn": "postgresql://db/fedge"}, "async_postgres"),
    ({"model_part_bytes": 256}, "async_model_parts"),  # the smallest part size sync mode accepts
])
def test_async_refuses_postgres_and_the_smallest_model_parts_by_name(changes, reason):
    assert CoordinatorConfig(**changes).mode == "sync"  # sync mode takes them
    with pytest.raises(AsyncConflict) as err:
        CoordinatorConfig(mode="async", **changes)
    assert err.value.reason == reason and f"({reason})" in str(err.value)
