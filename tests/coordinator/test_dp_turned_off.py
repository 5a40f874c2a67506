"""Privacy turned off on a state file whose ledger already holds charges (dp/budget.py,
PrivacyBudget._warn_off): the plain rounds that follow used to run without a word. One warning
at start names the rounds charged and the ε they spent; oracle: dp-accounting called directly.
A state file with no charge says nothing."""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.store import RoundStore
from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.coordinator.test_dp import _direct
from tests.coordinator.test_dp_rounds import DP, _manual_round, _privacy
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("charged", [2, 0])
def test_privacy_off_on_a_charged_ledger_warns_once_with_the_epsilon_spent(model, tmp_path, caplog, charged):
    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=2, min_reports=2, store=RoundStore(db), **DP,
                       privacy=_privacy(enabled=charged > 0))
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(4)]
    rng = np.random.default_rng(2)
    for _ in range(2):
        fleet.drain()
        assert fleet.coordinator.begin_round() and _manual_round(fleet, devices, rng).committed
    assert len(fleet.coordinator.store.privacy_ledger()) == charged
    off = replace(fleet.coordinator.config, privacy=replace(fleet.coordinator.config.privacy, enabled=False))
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator.privacy"):
        c = fleet.restart(store=RoundStore(db), config=off)
        fleet.drain()
        assert c.begin_round() and _manual_round(fleet, devices, rng).committed  # a plain round: not charged
    said = [r.getMessage() for r in caplog.records if "privacy is off" in r.getMessage()]
    assert len(c.store.privacy_ledger()) == charged
    if not charged:
        assert said == []
        return
    spent = _direct("fixed", 4, 2, 1.0, charged, 1e-5)
    assert len(said) == 1 and f"holds {charged} charged DP round(s) that spent ε = {spent:.4g} at δ = 1e-05" in said[0]


def test_privacy_off_on_a_ledger_row_that_is_no_json_warns_instead_of_stopping_the_start(tmp_path, caplog):
    """The warning's first read of the ledger was outside its try: a row that is not JSON stopped a
    start that privacy off never blocked, with a raw JSONDecodeError."""
    import sqlite3

    from fedge.coordinator.dp.budget import PrivacyBudget
    from fedge.coordinator.dp.config import PrivacyConfig

    db = tmp_path / "state.db"
    store = RoundStore(db)
    with sqlite3.connect(db) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(privacy_ledger)")]
        conn.execute(f"INSERT INTO privacy_ledger ({', '.join(columns)}) VALUES "
                     f"({', '.join('1' if c != columns[-1] else repr('{not json') for c in columns)})")
    conn.close()
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator.privacy"):
        PrivacyBudget(PrivacyConfig(), store, None)
    said = [r.getMessage() for r in caplog.records if "privacy is off" in r.getMessage()]
    assert len(said) == 1 and "an ε that cannot be read" in said[0]
