"""What one message does to the coordinator (coordinator/server.py), message by message on a
manual clock: a Status that says online changes nothing, one that says offline makes the device
ineligible until it checks in again."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Status
from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_status_saying_online_keeps_the_device_eligible_and_offline_takes_it_out(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=1)
    c, dev = fleet.coordinator, ManualDevice(fleet, "a", 5)
    fleet.drain()
    assert c.eligible_devices() == ["a"]
    dev.send(encode_message(Status("a", online=True)), channel="status")
    fleet.drain()
    assert c.eligible_devices() == ["a"] and c.registry["a"].reason == ""
    dev.send(encode_message(Status("a", online=False)), channel="status")
    fleet.drain()
    assert c.eligible_devices() == [] and c.registry["a"].reason == "offline" and c.registry.eligible == 0
    assert c.registry["a"].num_examples == 5  # kept: the device said nothing about its data
