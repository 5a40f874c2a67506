"""LeftOut.note's log line for many devices: the first 20 ids by name, the rest counted
(coordinator/left_out.py). Oracle: the ids as the aggregator reported them, in order."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from fedge.coordinator.left_out import LeftOut
from fedge.coordinator.metrics import CoordinatorMetrics


def test_many_excluded_devices_are_named_to_20_and_the_rest_counted(caplog):
    ids = [f"dev-{i:02d}" for i in range(25)]
    aggregator = SimpleNamespace(excluded_ids=ids, screened_ids=[], count=40, weight_cut=[])
    metrics = CoordinatorMetrics()
    with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
        LeftOut().note(7, aggregator, metrics)
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.endswith(": " + ", ".join(ids[:20]) + " and 5 more"), line
    assert "left 25 of 40 updates" in line
    assert metrics.registry.get_sample_value("fedge_updates_excluded_total") == 25
