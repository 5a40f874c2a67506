"""Loss visibility: devices log one line per task, and the coordinator reports the round's
example-weighted mean training loss in its record, its log and /metrics."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_round_reports_the_weighted_mean_train_loss(model, tmp_path, caplog):
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35))
    with caplog.at_level(logging.INFO):
        assert fleet.coordinator.begin_round()
        fleet.drain()
        record = fleet.coordinator.tick()
    assert record is not None and record.committed
    updates = fleet.updates()
    assert len(updates) == 3
    # Oracle: the plain loop of sum(n_i * loss_i) / sum(n_i) over what went on the wire.
    want = sum(u.num_examples * u.metrics["loss"] for u in updates) / sum(u.num_examples for u in updates)
    assert record.train_loss == pytest.approx(want, rel=1e-12)
    assert record.train_loss != pytest.approx(np.mean([u.metrics["loss"] for u in updates]), rel=1e-9)  # weighted
    gauge = fleet.coordinator.metrics.registry.get_sample_value("fedge_round_train_loss")
    assert gauge == pytest.approx(want)
    assert "round 1 committed" in caplog.text and f"mean train loss {want:.4g}" in caplog.text
    # One INFO line per task on each device: steps, loss and the bytes it sent.
    lines = [r.getMessage() for r in caplog.records if r.name == "fedge.agent" and "steps, loss" in r.getMessage()]
    assert len(lines) == 3
    for u in updates:
        (line,) = [x for x in lines if x.startswith(f"device {u.device_id}: round 1 task {u.task_id}:")]
        steps, loss, sent = re.search(r"(\d+) steps, loss (\S+), (\d+) bytes up", line).groups()
        assert int(steps) == int(u.metrics["steps"]) > 0
        assert float(loss) == pytest.approx(u.metrics["loss"], rel=1e-3)
        assert int(sent) == len(encode_message(u))


def test_a_device_cannot_poison_the_mean_loss(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=4)
    devices = [ManualDevice(fleet, f"m{i}", 10 * (i + 1)) for i in range(4)]
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(0)
    assert math.isnan(fleet.coordinator.metrics.registry.get_sample_value("fedge_round_train_loss"))  # none yet
    assert fleet.coordinator.begin_round()
    fleet.drain()
    # (a NaN loss cannot even be framed: the codec refuses non-finite floats, test_hostile_messages)
    for dev, loss in zip(devices, (0.5, -5.0, 1e300, None)):  # no cross-entropy is negative
        metrics = {} if loss is None else {"loss": loss}
        dev.send(encode_message(dev.update(random_delta(shapes, rng), metrics=metrics)))
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record.committed and record.reports == 4  # the updates count; their odd losses do not
    assert record.train_loss == pytest.approx(0.5)
