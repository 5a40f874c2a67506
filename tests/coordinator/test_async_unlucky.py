"""Async mode with devices that vanish: a device that takes a task and never answers, and a
fleet that leaves while a buffer is half full. The coordinator stays up, says why it waits,
keeps every accepted update, and the flushed model is a plain loop of FedBuff's step."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Status, device_topic
from tests.coordinator.fleet import assert_params, copy_params, random_delta
from tests.coordinator.test_async_server import _fleet, _send, fedbuff_oracle
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _waits(caplog) -> list[str]:
    return [r.message for r in caplog.records if " waits with " in r.message]


def test_a_device_that_never_answers_gets_no_new_task_until_it_is_heard_from(model, tmp_path, caplog):
    """A device whose task expired unanswered got a new one after each pace_declined_s rest, for
    good, each holding a concurrency slot until its deadline: a fleet of vanished devices kept
    the slots of the live ones busy. Now it waits until it says something."""
    fleet, (ghost, live) = _fleet(model, tmp_path, 2, buffer_size=4, max_staleness=10)
    c = fleet.coordinator
    rng = np.random.default_rng(4)
    assert c.machine.flight(ghost.id) is not None and c.machine.flight(live.id) is not None
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        for n in range(6):  # well past the ghost's deadline and each of its rests
            if c.machine.flight(live.id) is not None:
                _send(fleet, live, random_delta(c.shapes, rng, scale=0.001), f"u{n}")
            fleet.clock.advance(c.config.round_deadline_s + c.config.pace_declined_s + 1)
            live.check_in()
            fleet.drain()
            c.tick()
            fleet.drain()
            assert c.machine.flight(ghost.id) is None, n
    assert c.state.version == 1  # the live device filled the buffer alone (its share: 4 of 4 when alone)
    assert c.machine.flight(live.id) is not None
    # While the ghost still counted as present (pace_max_s), the live one's share was 2 of 4 and the
    # buffer waited; it said why, once: one device gave its share, one is silent
    assert any("1 eligible device not heard from since its last task expired" in w for w in _waits(caplog)), caplog.text

    ghost.check_in()  # heard from again: asked again at the next tick
    fleet.drain()
    c.tick()
    fleet.drain()
    assert c.machine.flight(ghost.id) is not None


def test_a_half_full_buffer_whose_fleet_left_says_why_it_waits_and_keeps_its_updates(model, tmp_path, caplog):
    """Every device went offline (its last will) with one update in a buffer of K = 3: the buffer
    has no deadline, so it waits, and it did so without a word. Now it says why, once; when the
    devices come back it fills, and the flushed model holds the update that waited, with the
    staleness it was accepted with."""
    fleet, devs = _fleet(model, tmp_path, 3, buffer_size=3, max_staleness=5)
    c = fleet.coordinator
    rng = np.random.default_rng(9)
    v0 = copy_params(c.state.params)
    sent = [_send(fleet, devs[0], random_delta(c.shapes, rng))]
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        for d in devs:
            d.t.publish(device_topic(d.id, "status"), encode_message(Status(d.id, online=False)))
        fleet.drain()
        for _ in range(4):
            fleet.clock.advance(c.config.round_deadline_s + c.config.pace_declined_s + 1)
            c.tick()
            fleet.drain()
    assert c.eligible_devices() == [] and c.machine.in_flight == 0 and c.machine.buffered == 1
    waits = _waits(caplog)
    assert len(waits) == 1 and "waits with 1 of K = 3 updates: no device is eligible (3 registered" in waits[0], waits

    for d in devs[1:]:  # back, with their tasks lost: they check in
        d.check_in()
    fleet.drain()
    c.tick()
    fleet.drain()
    sent += [_send(fleet, d, random_delta(c.shapes, rng), "u2") for d in devs[1:]]
    assert c.state.version == 1
    assert_params(c.state.params, fedbuff_oracle(v0, sent, [0, 0, 0]))
