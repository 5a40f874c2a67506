"""The PLD accountant below its noise floor (coordinator/dp/accountant.py, PLD_MIN_NOISE): with a
tiny z its discretised privacy loss took tens of seconds and gigabytes before each round (z = 0.01:
over 40 s, about 4 GB), in the coordinator's one loop. Below the floor the RDP bound is charged,
with one warning; at the floor PLD still is. Oracle: dp-accounting called directly."""

from __future__ import annotations

import logging

import pytest

from fedge.coordinator.dp import accountant
from fedge.coordinator.dp.accountant import PLD_MIN_NOISE, RoundCharge, epsilon
from tests.coordinator.test_dp import _direct


def test_below_the_floor_pld_charges_rdps_bound_and_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(accountant, "_said_fallback", set())
    z = 0.2  # PLD would take seconds here (and ε 30.7, not RDP's); 0.01 took minutes
    charges = [RoundCharge(3, 1, z, "poisson")] * 2
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator.privacy"):
        got = [epsilon(charges, 1e-5, "pld") for _ in range(3)]
    assert got == [pytest.approx(_direct("poisson", 3, 1, z, 2, 1e-5, "rdp"), rel=1e-9)] * 3
    said = [r.getMessage() for r in caplog.records if "PLD" in r.getMessage()]
    assert len(said) == 1 and f"noise multiplier {z:g} is below {PLD_MIN_NOISE:g}" in said[0]


def test_at_the_floor_pld_is_charged(caplog):
    charges = [RoundCharge(100, 1, PLD_MIN_NOISE, "poisson")]
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator.privacy"):
        got = epsilon(charges, 1e-5, "pld")
    assert got == pytest.approx(_direct("poisson", 100, 1, PLD_MIN_NOISE, 1, 1e-5, "pld"), rel=1e-9)
    assert not [r for r in caplog.records if "PLD" in r.getMessage()]
