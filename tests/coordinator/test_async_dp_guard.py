"""Async mode under central DP: a flush whose new model the guard refuses is still one accounting
event in the ledger (the noise was drawn and the noised aggregate computed: async_mode/server.py,
_flush; records.OpenRound.charge), once, also after a restart; the next flush is charged as the
second. Oracle: ε of the charged flushes from dp-accounting called directly (K of K devices)."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.async_mode import server as async_server
from fedge.coordinator.store import RoundStore
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_async_server import _dp_fleet, _send
from tests.coordinator.test_dp import _direct, _direct_unsampled
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _oracle(flushes: int) -> float:
    """2 of 2 devices at z = 1, δ = 1e-5: the smaller of the sampled and the plain Gaussian bound (test_dp)."""
    return min(_direct("fixed", 2, 2, 1.0, flushes, 1e-5), _direct_unsampled(1.0, flushes, 1e-5))


def _fill(fleet, devs, rng, update_id):
    """One update from each device into the open buffer (K = 2): the flush runs."""
    c = fleet.coordinator
    c.tick()
    fleet.drain()
    for d in devs:
        _send(fleet, d, random_delta(c.shapes, rng, scale=0.001), update_id)
        c.tick()
        fleet.drain()


def test_a_flush_the_guard_refuses_is_one_charged_accounting_event(model, tmp_path, monkeypatch):
    db = tmp_path / "state.db"
    fleet, devs = _dp_fleet(model, tmp_path, devices=2, buffer_size=2, store=RoundStore(db))
    c = fleet.coordinator
    rng = np.random.default_rng(4)
    monkeypatch.setattr(async_server, "commit_fault", lambda *_: "holdout_regressed: refused by the test")
    _fill(fleet, devs, rng, "u0")
    (record,) = c.history
    assert not record.committed and record.why.startswith("holdout_regressed") and c.state.version == 0
    ledger = RoundStore(db).privacy_ledger()
    assert [(p["population"], p["cohort"], p["expected_cohort"]) for p in ledger] == [(2, 2, 2)]
    assert c.privacy.spent() == pytest.approx(_oracle(1), rel=1e-9)
    monkeypatch.undo()
    c = fleet.restart(store=RoundStore(db))  # the refused flush stays charged once
    assert len(c.store.privacy_ledger()) == 1
    _fill(fleet, devs, rng, "u1")
    assert c.history[-1].committed and c.state.version == 1
    assert len(RoundStore(db).privacy_ledger()) == 2
    assert c.privacy.spent() == pytest.approx(_oracle(2), rel=1e-9)
