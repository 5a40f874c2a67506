"""A Pace is the coordinator's word, and the wire allows retry_after_s up to 1e9 s (31 years):
a device told that checked in next in 2057. It now checks in after at most its max_pace_s."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CheckIn, Pace, device_topic
from tests.edge_runtime.one_device import DEVICE, one_device, pump
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _paced(model, tmp_path, retry_after_s: float):
    clock = ManualClock()
    agent, coord = one_device(model, tmp_path, channels=("checkin",), clock=clock, max_pace_s=3600.0)
    pump(agent, coord)  # the check-in at start
    coord.publish(device_topic(DEVICE, "task"), encode_message(Pace(DEVICE, retry_after_s)))
    pump(agent, coord)
    return agent, coord, clock


def test_a_pace_of_31_years_waits_the_device_cap(model, tmp_path):
    agent, coord, clock = _paced(model, tmp_path, 1e9)
    assert agent.next_checkin == pytest.approx(3600.0)
    clock.advance(3599.0)
    assert not [m for m in pump(agent, coord) if isinstance(m, CheckIn)]
    clock.advance(1.0)
    assert [m for m in pump(agent, coord) if isinstance(m, CheckIn)]


def test_a_pace_within_the_cap_is_followed(model, tmp_path):
    agent, _, _ = _paced(model, tmp_path, 120.0)
    assert agent.next_checkin == pytest.approx(120.0)
