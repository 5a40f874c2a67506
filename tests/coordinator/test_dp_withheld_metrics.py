"""Under privacy the devices' mean training loss and federated evaluation are withheld unless
privacy.release_unnoised_metrics says otherwise (dp/config.py): both are functions of the
devices' data that the coordinator released unnoised and uncharged, into each round's record, its
log line and fedge_round_train_loss, and into evaluation records and gauges, beside an (ε, δ)
it claimed for the round. Oracle for the opt-in: the plain mean of the losses on the wire (privacy
weighs every device 1)."""

from __future__ import annotations

import logging
import math

import pytest

from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.evaluation import EvalConfig
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_dp_rounds import DP, _privacy, _round, model  # noqa: F401 (the fixture)


def _dp_round(model, tmp_path, caplog, **privacy):  # noqa: F811
    with caplog.at_level(logging.INFO):
        fleet = make_fleet(model, tmp_path, sizes=(30, 40, 25), **DP, privacy=_privacy(**privacy),
                           evaluation=EvalConfig(every_rounds=1, devices=0))  # every device, after each commit
        assert fleet.coordinator.begin_round()
        record = _round(fleet)
        fleet.drain()  # the devices answer the evaluation the commit started, if one was
        fleet.clock.advance(600.0)
        fleet.coordinator.tick()
    assert record.committed
    updates = fleet.updates()
    assert len(updates) == 3 and all(u.metrics["loss"] > 0 for u in updates)  # the devices did report one
    return fleet, record, sum(u.metrics["loss"] for u in updates) / 3


def test_privacy_withholds_the_devices_loss_and_evaluation_by_default(model, tmp_path, caplog):  # noqa: F811
    fleet, record, loss = _dp_round(model, tmp_path, caplog)
    c = fleet.coordinator
    assert record.train_loss is None
    assert [r["train_loss"] for r in c.store.round_records()] == [None]
    assert math.isnan(c.metrics.registry.get_sample_value("fedge_round_train_loss"))
    assert f"{loss:.4g}" not in caplog.text and "mean train loss none released" in caplog.text
    assert c.evaluations.run is None and not c.evaluations.history and c.store.evaluation_records() == []
    assert "training loss and federated evaluation are withheld" in caplog.text


def test_the_operator_can_release_them_outside_the_guarantee(model, tmp_path, caplog):  # noqa: F811
    fleet, record, loss = _dp_round(model, tmp_path, caplog, release_unnoised_metrics=True)
    c = fleet.coordinator
    assert record.train_loss == pytest.approx(loss, rel=1e-12)
    assert c.metrics.registry.get_sample_value("fedge_round_train_loss") == pytest.approx(loss)
    assert len(c.store.evaluation_records()) == 1  # the evaluation ran and closed
    assert "outside the (ε, δ) guarantee" in caplog.text


def test_without_privacy_the_flag_changes_nothing():
    assert not PrivacyConfig().withholds_metrics and not PrivacyConfig(release_unnoised_metrics=True).withholds_metrics
    assert PrivacyConfig(enabled=True, noise_multiplier=1.0).withholds_metrics
