"""Async admission's first check (coordinator/async_mode/admission.py, check_key), found blind by
benchmarks/results/2026-12-06-mutation4-privacy: an update on another device's topic is refused
as stale_round before the buffer's machine sees it. Later checks refuse it too (check_current),
but after the machine has taken its Arrived event, and a refused update drops its flight: without
the first check a device could cancel another's task by sending in its name."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.async_mode.admission import check_key
from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.errors import StaleRound
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import TrainTask
from tests.coordinator.fleet import ManualDevice, assert_params, copy_params, make_fleet, random_delta
from tests.coordinator.test_async_server import _fleet, _send, fedbuff_oracle
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


def test_a_device_whose_updates_are_refused_gets_no_new_task_until_it_has_rested(model, tmp_path):
    """Found by the wire red team: a refused update answers its task and frees its slot, and the
    next tick gave the device a new task (a journal row and the model's bytes), so a device that
    answered each task with a cheap wrong update (here a base version from the future) drew one
    task per round trip, past the check-in budget and task_resend_s: 50 such updates, one per
    tick, drew 50 new tasks. Its slot is still freed, but it rests pace_declined_s like a device
    that declined, then gets one task; the honest devices' buffer flushes to FedBuff's step."""
    fleet = make_fleet(model, tmp_path, mode="async", pace_declined_s=30.0,
                       async_=AsyncConfig(concurrency=3, buffer_size=2, max_staleness=1))
    x, h0, h1 = (ManualDevice(fleet, d, 10 + i) for i, d in enumerate(("x", "h0", "h1")))
    fleet.drain()
    c, rng = fleet.coordinator, np.random.default_rng(3)
    assert c.begin_round()
    c.tick()
    fleet.drain()

    def tasks_to_x() -> int:
        x.receive()
        return sum(isinstance(m, TrainTask) for m in x.inbox)

    for i in range(50):  # 25 s of the 30 s rest: an update and a tick every 0.5 s
        x.send(encode_message(x.update(random_delta(c.shapes, rng), update_id=f"x{i}", base_version=999)))
        fleet.drain()
        c.tick()
        fleet.drain()
        fleet.clock.advance(0.5)
    assert tasks_to_x() == 1 and c.machine.flight("x") is None
    # the first answered its task; the rest answer none in flight
    assert c.rejections == {"wrong_model": 1, "stale_round": 49}
    assert x.acks() == [(False, "wrong_model")] + [(False, "stale_round")] * 49
    x.check_in()
    fleet.drain()
    assert x.paces()[-1].reason == "declined"
    fleet.clock.advance(5.0)  # its rest is over: one task
    c.tick()
    fleet.drain()
    assert tasks_to_x() == 2 and c.machine.flight("x").task_id == x.task().task_id

    v0 = copy_params(c.state.params)
    honest = [_send(fleet, d, random_delta(c.shapes, rng)) for d in (h0, h1)]
    assert c.state.version == 1 and c.history[-1].reports == 2
    assert_params(c.state.params, fedbuff_oracle(v0, honest, [0, 0]))
