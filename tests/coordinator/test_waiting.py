"""A coordinator with too few eligible devices says what it waits for: one log line when the
picture changes (not one per poll) and the fedge_devices_needed gauge."""

from __future__ import annotations

import logging

import pytest

from fedge.coordinator.loop import CoordinatorLoop
from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _needed(fleet) -> float:
    return fleet.coordinator.metrics.registry.get_sample_value("fedge_devices_needed")


def test_the_loop_says_what_it_waits_for_and_exports_it(model, tmp_path, caplog):
    fleet = make_fleet(model, tmp_path, clients_per_round=2)
    a, b = ManualDevice(fleet, "a", 10), ManualDevice(fleet, "b", 10)
    a.check_in(False, "cpu_busy")
    b.check_in(False, "cpu_busy")
    fleet.drain()
    loop = CoordinatorLoop(fleet.coordinator, min_devices=2, poll_s=0.01)
    with caplog.at_level(logging.INFO, logger="fedge.coordinator.loop"):
        for _ in range(5):  # five polls, one picture: one line
            loop._maybe_begin()
            fleet.clock.advance(1.0)
        lines = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
        assert lines == ["coordinator: waiting for 2 eligible devices: 2 registered, 0 eligible (cpu_busy x2)"]
        assert _needed(fleet) == 2
        a.check_in(True)
        fleet.drain()
        loop._maybe_begin()
        lines = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
        assert lines[-1] == "coordinator: waiting for 2 eligible devices: 2 registered, 1 eligible (cpu_busy x1)"
        assert _needed(fleet) == 1
        b.check_in(True)
        fleet.drain()
        fleet.clock.advance(1.0)
        loop._maybe_begin()
    assert fleet.coordinator.round is not None and _needed(fleet) == 0  # the round began


def test_the_waiting_line_counts_devices_sitting_out_an_offence(model, tmp_path, caplog):
    """Eligible devices left out for a secure-aggregation offence (sidelined.py) were in no count:
    a fleet whose signatures all failed read "2 eligible" and no reason why no round began."""
    fleet = make_fleet(model, tmp_path, clients_per_round=2)
    a, b = ManualDevice(fleet, "a", 10), ManualDevice(fleet, "b", 10)
    a.check_in(True)
    b.check_in(True)
    fleet.drain()
    fleet.coordinator.sidelined.offence("a", fleet.clock.now())
    loop = CoordinatorLoop(fleet.coordinator, min_devices=2, poll_s=0.01)
    with caplog.at_level(logging.INFO, logger="fedge.coordinator.loop"):
        loop._maybe_begin()
        a.check_in(False, "charging")  # now it has a reason of its own: counted once, by that
        fleet.drain()
        loop.next_begin = 0.0
        loop._maybe_begin()
    lines = [r.getMessage() for r in caplog.records if "waiting for" in r.getMessage()]
    assert lines == ["coordinator: waiting for 2 eligible devices: 2 registered, 1 eligible (sidelined x1)",
                     "coordinator: waiting for 2 eligible devices: 2 registered, 1 eligible (charging x1)"]
