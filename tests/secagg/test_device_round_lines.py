"""A device in a secure round says what it did, as a plain task's line does (agent.py): an operator
walking the README with a secure fleet found no device line per round, and no way to see a newly
provisioned device selected."""

from __future__ import annotations

import logging

from tests.coordinator.fleet import make_fleet
from tests.secagg.fleet_round import SETTINGS, _run_round

SIZES = (30, 30, 30, 30)


def test_each_device_of_a_secure_round_logs_its_training_and_its_masked_input(model, tmp_path, caplog):
    caplog.set_level(logging.INFO, "fedge.secagg")
    fleet = make_fleet(model, tmp_path, sizes=SIZES, min_reports=3, **SETTINGS)
    record = _run_round(fleet)
    assert record.committed and record.reports == len(SIZES), record.why
    said = [r.getMessage() for r in caplog.records if r.name == "fedge.secagg"]
    for agent in fleet.agents:
        mine = [line for line in said if line.startswith(f"device {agent.device_id}: round {record.round_id}")]
        assert any("steps, loss" in line and "keys advertised" in line for line in mine), mine
        assert any("masked input sent" in line for line in mine), mine
