"""A device parked for bad_dataset is back in the next round once its data is fixed and
reloaded (SIGHUP), without waiting out the Pace its decline earned.

The coordinator leaves out a device that declined bad_dataset until it checks in with
something new, and paces it for pace_declined_s (600 s). A SIGHUP reload used to change the
data and say nothing: the operator who fixed the file waited up to 10 minutes for the next
check-in (found over Mosquitto). The clock here never moves, so only a check-in the reload
itself causes can bring the device back."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest

from fedge.edge_runtime.device import LocalData
from fedge.edge_runtime.run import install_reload
from tests.coordinator.fleet import local_data, make_fleet
from tests.tiny_model import FEATURES, build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _selected(fleet, round_id: int) -> list[str]:
    return sorted(t.device_id for t in fleet.tasks() if t.round_id == round_id)


def test_a_reload_brings_a_parked_device_back_at_once(model, tmp_path, monkeypatch):
    fleet = make_fleet(model, tmp_path, sizes=(10, 20), min_reports=1, abandon_backoff_s=0.0)
    pi = fleet.agents[1]
    rng = np.random.default_rng(1)
    good = local_data(rng, 30)
    pi.runtime.replace_data(LocalData(good.x_train[:, :FEATURES - 1], good.y_train,
                                      good.x_test[:, :FEATURES - 1], good.y_test))  # one feature short
    assert fleet.coordinator.begin_round()
    fleet.drain()
    assert fleet.coordinator.declines["bad_dataset"] == 1
    assert fleet.coordinator.tick().committed
    assert fleet.coordinator.begin_round()
    fleet.drain()
    assert _selected(fleet, 2) == ["dev0"]  # parked
    assert fleet.coordinator.tick().committed

    npz = tmp_path / "fixed.npz"
    np.savez(npz, x_train=good.x_train, y_train=good.y_train, x_test=good.x_test, y_test=good.y_test)
    asked = threading.Event()
    check_in_soon = pi.check_in_soon
    monkeypatch.setattr(pi, "check_in_soon", lambda: (check_in_soon(), asked.set()))
    previous = signal.getsignal(signal.SIGHUP)
    try:
        install_reload(pi, str(npz))
        os.kill(os.getpid(), signal.SIGHUP)
        asked.wait(10)  # the reload thread's last step (a bound: without it the device stays parked below)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert len(pi.runtime.data.y_train) == 30
    for agent in fleet.agents:
        agent.tick()  # the clock has not moved: no check-in is due but the one the reload asked for
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    assert _selected(fleet, 3) == ["dev0", "dev1"]
    record = fleet.coordinator.tick()
    assert record.committed and record.reports == 2, record
