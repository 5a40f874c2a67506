"""Async admission's first check (coordinator/async_mode/admission.py, check_key), found blind by
benchmarks/results/2026-12-06-mutation4-privacy: an update on another device's topic is refused
as stale_round before the buffer's machine sees it. Later checks refuse it too (check_current),
but after the machine has taken its Arrived event, and a refused update drops its flight: without
the first check a device could cancel another's task by sending in its name."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.async_mode.admission import check_key
from fedge.coordinator.errors import StaleRound
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_async_server import _fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_an_update_sent_in_another_devices_name_leaves_its_task_in_flight(model, tmp_path):
    fleet, devs = _fleet(model, tmp_path, 2)
    c = fleet.coordinator
    rng = np.random.default_rng(1)
    task = c.machine.flight("m0").task_id
    forged, real = (devs[0].update(random_delta(c.shapes, rng), update_id=u) for u in ("u1", "u2"))
    with pytest.raises(StaleRound, match="arrived on device m1's topic"):
        check_key(forged, "m1", lambda *key: None)
    devs[1].send(encode_message(forged))  # m1 sends an update in m0's name, for m0's task, on its own topic
    fleet.drain()
    assert c.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": "stale_round"}) == 1
    assert c.machine.flight("m0").task_id == task  # the same task, not one dispatched since
    devs[0].send(encode_message(real))  # m0's own update for that task is still taken
    fleet.drain()
    assert devs[0].acks() == [(True, "")]
