"""AsyncCoordinator's decisions at their edges (coordinator/async_mode/server.py), found blind by
benchmarks/results/2026-12-06-mutation6-async: a task is resent until its deadline and not at it;
the journal's tasks are the machine's flights after a stale update; a task row fedge never
writes (a second one for a device) is dropped at restart, the first kept; a device resting after
a decline does not count toward the fair share ceil(K / devices present); a device with a task out
that checks in ineligible is paced, not sent the task again to decline, and its concurrency slot
goes to another device at the next tick while its update is still accepted until the deadline."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Decline, Status, TrainTask
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_async_server import _fleet, _send
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _tasks_received(device) -> int:
    device.receive()
    return sum(isinstance(m, TrainTask) for m in device.inbox)


def _journal_tasks(db) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT task_id, device_id FROM async_tasks ORDER BY rowid").fetchall()


def test_a_task_is_resent_to_a_device_that_checks_in_before_its_deadline_and_not_at_it(model, tmp_path):
    fleet, (early, exact) = _fleet(model, tmp_path, 2)
    c = fleet.coordinator
    deadline_s = c.config.round_deadline_s
    assert c.config.task_resend_s < deadline_s - 1 and _tasks_received(early) == _tasks_received(exact) == 1
    fleet.clock.advance(deadline_s - 1)
    early.check_in()
    fleet.drain()
    assert _tasks_received(early) == 2 and early.task().deadline_s == pytest.approx(1.0)
    fleet.clock.advance(1)  # exactly the flights' deadline: the task is over, nothing is resent
    exact.check_in()
    fleet.drain()
    assert c.machine.flight(exact.id) is not None  # no tick yet: still in the table
    assert _tasks_received(exact) == 1


def test_a_stale_update_retires_its_task_in_the_journal_as_in_the_machine(model, tmp_path):
    db = tmp_path / "state.db"
    fleet, devs = _fleet(model, tmp_path, 3, store=RoundStore(db), buffer_size=1, max_staleness=0)
    c = fleet.coordinator
    rng = np.random.default_rng(2)
    _send(fleet, devs[0], random_delta(c.shapes, rng))  # K = 1: v1; m1 and m2 now 1 behind
    assert c.state.version == 1
    devs[1].send(encode_message(devs[1].update(random_delta(c.shapes, rng))))
    fleet.drain()
    assert c.rejections["stale_update"] == 1 and c.machine.flight(devs[1].id) is None
    flights = [(f.task_id, d) for d, f in c.machine.flights]
    assert _journal_tasks(db) == flights == [(devs[2].task().task_id, devs[2].id)]
    again = fleet.restart(store=RoundStore(db))  # and a restart does not bring it back
    assert [(f.task_id, d) for d, f in again.machine.flights] == flights


def test_a_second_task_row_for_a_device_is_dropped_at_restart_and_the_first_kept(model, tmp_path):
    db = tmp_path / "state.db"
    fleet, devs = _fleet(model, tmp_path, 2, store=RoundStore(db))
    first = _journal_tasks(db)
    with sqlite3.connect(db) as conn:  # not written by fedge: a second task for m0
        conn.execute("INSERT INTO async_tasks SELECT 'extra', device_id, round_id, base_version, deadline_wall "
                     "FROM async_tasks WHERE device_id = ?", (devs[0].id,))
    assert len(_journal_tasks(db)) == 3
    c = fleet.restart(store=RoundStore(db))
    assert [(f.task_id, d) for d, f in c.machine.flights] == first
    assert _journal_tasks(db) == first


def test_a_device_resting_after_a_decline_is_not_present_for_the_fair_share(model, tmp_path):
    """K = 2, two devices: b declines and checks in (seen, but resting pace_declined_s). Present is
    a alone, so a's share is ceil(2 / 1) = 2 and it fills the buffer before b's rest ends."""
    fleet, (a, b) = _fleet(model, tmp_path, 2, buffer_size=2, max_staleness=5)
    c = fleet.coordinator
    rng = np.random.default_rng(4)
    task = b.task()
    b.send(encode_message(Decline(b.id, task.round_id, task.task_id, "battery_low")))
    b.check_in()
    _send(fleet, a, random_delta(c.shapes, rng), "u0")
    assert c.machine.buffered == 1 and c.machine.flight(a.id) is None
    fleet.clock.advance(1.0)  # well inside b's rest
    c.tick()
    fleet.drain()
    assert c.machine.flight(a.id) is not None and c.machine.flight(b.id) is None
    _send(fleet, a, random_delta(c.shapes, rng), "u1")
    assert c.state.version == 1


def test_a_device_with_a_task_out_that_checks_in_ineligible_is_paced_and_its_task_kept(model, tmp_path):
    """It was sent its task again, declined it at once (the whole model for nothing) and rested
    pace_declined_s: the resend is for a device that lost its task and can train it."""
    fleet, (busy, other) = _fleet(model, tmp_path, 2)
    c = fleet.coordinator
    flight, sent = c.machine.flight(busy.id), c.round.bytes_down
    assert flight is not None and _tasks_received(busy) == 1
    fleet.clock.advance(c.config.task_resend_s + 1)  # past the resend throttle
    busy.check_in(eligible=False, reason="cpu_busy")
    fleet.drain()
    assert _tasks_received(busy) == 1 and c.round.bytes_down == sent  # no copy of the task
    assert busy.paces()[-1].reason == "ineligible"
    assert c.machine.flight(busy.id) == replace(flight, holds_slot=False)  # kept (its deadline or its decline
    # ends it), but holding no concurrency slot: test_an_ineligible_device_s_slot_goes_to_another_device
    busy.check_in()  # eligible again, task still out: it gets it again
    fleet.drain()
    assert _tasks_received(busy) == 2 and busy.task().task_id == flight.task_id


def test_an_ineligible_device_s_slot_goes_to_another_device_and_its_update_still_counts(model, tmp_path):
    """Concurrency 1: the device with the task out checks in ineligible (its task lost, its model
    on the way, or its update waiting to be resent). The other device waited for the task's
    deadline (600 s) for the slot; it gets a task at the next tick, and the first device's
    update, when it comes, is accepted as before (the slot's release lost no training)."""
    fleet, (busy, other) = _fleet(model, tmp_path, 2, concurrency=1)
    c = fleet.coordinator
    out = [d for d in (busy, other) if c.machine.flight(d.id) is not None]
    assert len(out) == 1
    busy, other = out[0], other if out[0] is busy else busy
    fleet.clock.advance(1.0)
    busy.check_in(eligible=False, reason="battery_low")
    fleet.drain()
    c.tick()
    fleet.drain()
    assert _tasks_received(other) == 1 and c.machine.flight(other.id) is not None
    assert (c.machine.in_flight, c.machine.holding) == (2, 1)
    _send(fleet, busy, random_delta(c.shapes, np.random.default_rng(5)))
    assert busy.acks() == [(True, "")] and c.machine.buffered == 1 and c.machine.flight(busy.id) is None


def _flap(fleet, devices, ticks: int) -> list[int]:
    """Each tick, every device with a slot-holding task out checks in ineligible; tasks out after each."""
    c, out = fleet.coordinator, []
    for _ in range(ticks):
        for d in devices:
            if (flight := c.machine.flight(d.id)) is not None and flight.holds_slot:
                d.check_in(eligible=False, reason="battery_low")
        fleet.drain()
        fleet.clock.advance(1.0)
        c.tick()
        fleet.drain()
        out.append(c.machine.in_flight)
    return out


def test_devices_that_give_their_slot_up_after_each_task_cannot_draw_more_than_twice_concurrency(model, tmp_path):
    """The reviewer's repro: concurrency 1, six devices each checking in ineligible once its task is
    out. A released flight stopped counting, so each tick sent one more task: 6 out (the fleet),
    each a model's bytes down and an update's room in the reassembly budget. Now 2 at most."""
    fleet, devs = _fleet(model, tmp_path, 6, concurrency=1)
    assert _flap(fleet, devs, 8) == [2] * 8
    assert fleet.coordinator.machine.holding == 0 and sum(map(_tasks_received, devs)) == 2  # one task each


def test_after_a_restart_only_a_task_whose_device_may_train_holds_a_slot(model, tmp_path):
    """The journal does not keep a release, and the restart gave every task out its slot back:
    concurrency 2, two tasks released and two holding; one of those answered, so 3 out, 1 holding,
    and the restarted coordinator counted 3 holding and sent nothing until tasks ended. The
    registry (its devices' last check-ins) says which may train: 1 holds, a task goes to the
    device left idle."""
    db = tmp_path / "state.db"
    fleet, devs = _fleet(model, tmp_path, 5, store=RoundStore(db), concurrency=2)
    c = fleet.coordinator
    first = [d for d in devs if c.machine.flight(d.id) is not None]
    for d in first:
        d.check_in(eligible=False, reason="battery_low")
    fleet.drain()
    fleet.clock.advance(1.0)
    c.tick()
    fleet.drain()
    second = [d for d in devs if d not in first and c.machine.flight(d.id) is not None]
    idle = [d for d in devs if c.machine.flight(d.id) is None]
    assert (len(first), len(second), len(idle), c.machine.holding) == (2, 2, 1, 2)
    _send(fleet, second[0], random_delta(c.shapes, np.random.default_rng(5)))
    assert second[0].acks() == [(True, "")] and (c.machine.in_flight, c.machine.holding) == (3, 1)
    again = fleet.restart(store=RoundStore(db))
    assert (again.machine.in_flight, again.machine.holding) == (3, 1)
    assert [d for d, f in again.machine.flights if f.holds_slot] == [second[1].id]
    fleet.drain()  # the restart resends tasks out, a model each, only to devices that may train (a review's find)
    assert [_tasks_received(d) for d in first] == [1, 1] and _tasks_received(second[1]) == 2
    fleet.clock.advance(1.0)
    again.tick()
    fleet.drain()
    assert _tasks_received(idle[0]) == 1 and (again.machine.in_flight, again.machine.holding) == (4, 2)


def test_a_last_will_frees_the_slot_like_an_ineligible_check_in(model, tmp_path):
    """Concurrency 1: the device with the task out goes offline (its Last Will). Its slot stayed
    taken until the deadline (600 s), the other device idle; now it gets a task at the next tick,
    and the gone device's task stays out: an update it sends on reconnecting still counts."""
    fleet, devs = _fleet(model, tmp_path, 2, concurrency=1)
    c = fleet.coordinator
    (gone,) = [d for d in devs if c.machine.flight(d.id) is not None]
    (other,) = [d for d in devs if d is not gone]
    gone.send(encode_message(Status(gone.id, online=False)), channel="status")
    fleet.drain()
    assert c.machine.flight(gone.id).holds_slot is False
    fleet.clock.advance(1.0)
    c.tick()
    fleet.drain()
    assert _tasks_received(other) == 1 and (c.machine.in_flight, c.machine.holding) == (2, 1)
    _send(fleet, gone, random_delta(c.shapes, np.random.default_rng(6)))
    assert gone.acks() == [(True, "")] and c.machine.buffered == 1
