"""The async buffer's state machine (coordinator/async_mode) attacked by a device that is buggy
or malicious: it answers its task twice (same bytes, other bytes, a new update id), declines a
task it answered, replays an update of an earlier buffer as it was and with the round changed,
and claims base versions from the future, huge and negative. Each is refused by name (exported
and logged), the device's slot is freed only when it answered its own task, nothing is buffered
twice, and each flush is FedBuff's step over the updates that counted (the oracle: a plain loop
over the arrays the devices sent, equal weights, f(s) = (1 + s)^-0.5)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Decline
from tests.coordinator.fleet import ManualDevice, assert_params, copy_params, make_fleet, random_delta
from tests.coordinator.hostile import CODES, as_map, raw_frame
from tests.coordinator.phase_attack import capture, judged, refused
from tests.tiny_model import build_tiny_model

HONEST = ("h0", "h1", "h2")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def fedbuff(old, deltas, staleness, a=0.5):
    """old + Σ (1 + s_i)^-a Δ_i / n: equal weights, in float64, from the arrays sent."""
    out = {}
    for name, value in old.items():
        acc = sum((1.0 + s) ** -a * d[name].astype(np.float64) for d, s in zip(deltas, staleness))
        out[name] = value.astype(np.float64) + acc / len(deltas)
    return out


def _send(fleet, device, delta, update_id):
    device.send(encode_message(device.update(delta, update_id=update_id)))
    fleet.drain()
    return delta


def test_answers_twice_replays_and_version_claims_are_refused_and_each_flush_is_fedbuffs(model, tmp_path, caplog):
    capture(caplog)
    fleet = make_fleet(model, tmp_path, mode="async", weighting="equal", pace_declined_s=1.0,  # well inside deadlines
                       async_=AsyncConfig(concurrency=4, buffer_size=3, max_staleness=1))
    devices = {name: ManualDevice(fleet, name, 10 + i) for i, name in enumerate(HONEST + ("x",))}
    fleet.drain()
    c, x, rng = fleet.coordinator, devices["x"], np.random.default_rng(21)
    shapes = c.shapes
    assert c.begin_round()
    c.tick()  # dispatch: all four in flight on v0
    fleet.drain()
    assert c.machine.in_flight == 4

    # Buffer 1: x's update counts once, whatever it sends after it.
    v0 = copy_params(c.state.params)
    first_delta = random_delta(shapes, rng)
    first = x.update(first_delta, update_id="x1")
    assert judged(fleet, caplog, x, first) == Counter()
    old_task = x.task()
    refused(fleet, caplog, x, first, "duplicate")
    refused(fleet, caplog, x, x.update(random_delta(shapes, rng), update_id="x1"), "conflicting_duplicate")
    refused(fleet, caplog, x, x.update(random_delta(shapes, rng), update_id="x2"), "stale_round")
    refused(fleet, caplog, x, Decline("x", old_task.round_id, old_task.task_id, "battery_low"), "stale_round")
    for base in (-1, 2**63):  # no such version can be framed
        refused(fleet, caplog, x, raw_frame(CODES[type(first)], {**as_map(first), "update_id": "neg",
                                                                 "base_version": base}), "malformed")
    assert c.machine.buffered == 1 and not c.declines
    assert x.acks() == [(True, ""), (True, "duplicate"), (False, "conflicting_duplicate"), (False, "stale_round")]
    honest = [_send(fleet, devices[n], random_delta(shapes, rng), "a") for n in HONEST[:2]]
    assert c.state.version == 1 and c.history[-1].reports == 3
    assert_params(c.state.params, fedbuff(v0, [first_delta] + honest, [0, 0, 0]))

    # Buffer 2: h2 still trains on v0 (staleness 1); x, h0 and h1 get tasks on v1.
    v1 = copy_params(c.state.params)
    c.tick()
    fleet.drain()
    task = x.task()
    assert task.task_id != old_task.task_id and task.model_version == 1
    refused(fleet, caplog, x, first, "duplicate")  # buffer 1's update as it was: in, once
    refused(fleet, caplog, x, dataclasses.replace(first, round_id=task.round_id), "stale_round")
    refused(fleet, caplog, x, Decline("x", old_task.round_id, old_task.task_id, "battery_low"), "stale_round")
    assert c.machine.flight("x").task_id == task.task_id  # none of those was an answer to its task
    for claim in (task.model_version + 1, 2**63 - 1, task.model_version - 1):  # future, huge, past
        refused(fleet, caplog, x, x.update(random_delta(shapes, rng), update_id=f"v{claim}", base_version=claim),
                "wrong_model")
        assert c.machine.flight("x") is None  # it answered its own task, wrongly: its slot is free
        c.tick()  # but it rests like a decliner first (test_async_boundaries.py says why)
        assert c.machine.flight("x") is None
        fleet.clock.advance(c.config.pace_declined_s)
        c.tick()
        fleet.drain()
        assert c.machine.flight("x").task_id == x.task().task_id
        task = x.task()
    assert c.machine.buffered == 0 and c.machine.flight("h2").base_version == 0
    honest = [_send(fleet, devices[n], random_delta(shapes, rng), "b") for n in HONEST]
    assert c.state.version == 2 and c.history[-1].reports == 3
    assert_params(c.state.params, fedbuff(v1, honest, [0, 0, 1]))
    for name in HONEST:
        assert all(a == (True, "") for a in devices[name].acks()), name
        assert not c.registry[name].parked and c._rest.get(name, 0.0) <= fleet.clock.now()
    assert set(HONEST) <= set(c.eligible_devices())
    assert set(c.rejections) == {"duplicate", "conflicting_duplicate", "stale_round", "malformed", "wrong_model"}



def test_a_device_that_declines_every_task_does_not_hold_the_others_to_their_share(model, tmp_path):
    """x, eligible, declines every task it gets and checks in again after each: it never gives,
    and it rests pace_declined_s after each decline, but it counted as present toward the fair
    share (ceil(K / present)): with h0 and h1 left to give, each was held to 1 of K = 3 and the
    buffer waited at 2 for good (100 simulated minutes, one flush). Now a resting device is not
    counted; the buffers fill from h0 and h1, each flush FedBuff's step over their deltas."""
    fleet = make_fleet(model, tmp_path, mode="async", weighting="equal",
                       async_=AsyncConfig(concurrency=3, buffer_size=3, max_staleness=5))
    devices = {name: ManualDevice(fleet, name, 10) for name in ("h0", "h1", "x")}
    fleet.drain()
    c, rng = fleet.coordinator, np.random.default_rng(22)
    assert c.begin_round()
    flushes, buffer, old = [], [], copy_params(c.state.params)
    for step in range(12):
        c.tick()
        fleet.drain()
        for name in ("h0", "h1"):
            if c.machine.flight(name) is not None:
                version, base = c.state.version, devices[name].task().model_version
                buffer.append((_send(fleet, devices[name], random_delta(c.shapes, rng), f"s{step}"), version - base))
                if c.state.version != version:  # this update flushed the buffer
                    flushes.append((old, buffer, copy_params(c.state.params)))
                    buffer, old = [], copy_params(c.state.params)
        if c.machine.flight("x") is not None:
            task = devices["x"].task()
            devices["x"].send(encode_message(Decline("x", task.round_id, task.task_id, "battery_low")))
        devices["x"].check_in()
        fleet.drain()
        fleet.clock.advance(30.0)
    assert c.declines["battery_low"] >= 1 and not c.rejections
    assert len(flushes) >= 3, (c.state.version, c.machine.buffered)
    for old, updates, new in flushes:
        assert_params(new, fedbuff(old, [d for d, _ in updates], [s for _, s in updates]))
    assert set(c.eligible_devices()) == {"h0", "h1", "x"}
