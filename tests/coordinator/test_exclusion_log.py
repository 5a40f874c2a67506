"""The norm bound's exclusion, seen by an operator: an update over the exclusion bound is left
out of the aggregate, and the coordinator logs its device id and counts it
(`fedge_updates_excluded_total`), as it does for the guard set's screening."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.coordinator.metrics import CoordinatorMetrics
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_an_update_over_the_exclusion_bound_is_logged_counted_and_left_out(model, tmp_path, caplog):
    metrics = CoordinatorMetrics()
    fleet = make_fleet(model, tmp_path, clients_per_round=4, min_reports=4, aggregator="norm_bound", metrics=metrics)
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(4)]
    fleet.drain()
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    before = {k: v.astype(np.float64) for k, v in c.state.params.items()}
    rng = np.random.default_rng(3)
    deltas = [random_delta(shapes, rng, 0.01) for _ in range(3)]
    deltas.append({k: 50.0 * v for k, v in random_delta(shapes, rng, 0.01).items()})  # ~50x the others' norm
    assert c.begin_round()
    fleet.drain()
    for d, delta in zip(devices, deltas):
        d.send(encode_message(d.update(delta)))
    fleet.drain()
    with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
        record = c.tick()
    assert record.committed and record.reports == 4
    # oracle: the first round clips to 2x and leaves out over 4x the round's own median norm; the
    # three kept are under the clip bound, so the step is their plain mean (equal weights)
    norms = [np.sqrt(sum(np.sum(np.square(v.astype(np.float64))) for v in d.values())) for d in deltas]
    assert max(norms[:3]) < 2 * np.median(norms) < 4 * np.median(norms) < norms[3]
    for k, value in before.items():
        expect = value + np.mean([d[k].astype(np.float64) for d in deltas[:3]], axis=0)
        np.testing.assert_allclose(c.state.params[k], expect, rtol=1e-5, atol=1e-6)
    assert metrics.registry.get_sample_value("fedge_updates_excluded_total") == 1
    assert metrics.registry.get_sample_value("fedge_updates_screened_total") == 0
    assert c.left_out.excluded == {"m3": 1} and not c.left_out.screened
    assert any("the norm bound" in r.getMessage() and "left 1 of 4" in r.getMessage() and "m3" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
