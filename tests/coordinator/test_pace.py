"""Pace steering: the pure delay function, and the replies a device gets when it checks in
with nothing to do."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator import pace
from fedge.coordinator.rounds import Declined, Replied, Tick, on_event, sync_round
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Decline, Pace, Status, TrainTask
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model

KNOBS = dict(idle_s=60.0, declined_s=600.0, jitter_s=10.0, max_s=3600.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_jitter_is_fixed_per_device_and_round_and_spread_over_devices():
    assert pace.jitter_fraction(0, "pi-1", 3) == pace.jitter_fraction(0, "pi-1", 3)
    assert pace.jitter_fraction(0, "pi-1", 3) != pace.jitter_fraction(0, "pi-1", 4)
    assert pace.jitter_fraction(0, "pi-1", 3) != pace.jitter_fraction(1, "pi-1", 3)
    values = np.array([pace.jitter_fraction(0, f"dev{i}", 1) for i in range(4000)])
    assert values.min() >= 0.0 and values.max() < 1.0
    # Uniform on [0, 1): each tenth holds about 400 (binomial sd ~19; 6 sd of slack).
    counts = np.histogram(values, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 400) < 115), counts


@pytest.mark.parametrize("reason,remaining,jitter,want", [
    (pace.NO_ROUND, 500.0, 0.5, 60.0 + 5.0),  # remaining does not matter when nothing is open
    (pace.NOT_SELECTED, 120.0, 0.25, 120.0 + 2.5),
    (pace.REPORTED, 30.0, 0.0, 30.0),
    (pace.DECLINED, 120.0, 0.1, 600.0 + 1.0),  # the longer backoff
    (pace.DECLINED, 900.0, 0.1, 900.0 + 1.0),  # never before the open round ends
    (pace.INELIGIBLE, 0.0, 0.0, 600.0),
    (pace.NOT_SELECTED, -5.0, 0.0, 1.0),  # deadline passed, not yet ticked: the floor
    (pace.NOT_SELECTED, 10_000.0, 0.9, 3600.0),  # the cap
])
def test_retry_after(reason, remaining, jitter, want):
    assert pace.retry_after(reason, remaining, jitter=jitter, **KNOBS) == pytest.approx(want)


def test_unknown_reason_is_refused():
    with pytest.raises(ValueError, match="unknown pace reason"):
        pace.retry_after("sleepy", 1.0, jitter=0.0, **KNOBS)


def _expected(fleet, device_id, reason, round_id):
    cfg, c = fleet.coordinator.config, fleet.coordinator
    remaining = c.round.machine.deadline - fleet.clock.now() if c.round else 0.0
    return pace.retry_after(reason, remaining, idle_s=cfg.pace_idle_s, declined_s=cfg.pace_declined_s,
                            jitter_s=cfg.pace_jitter_s, max_s=cfg.pace_max_s,
                            jitter=pace.jitter_fraction(cfg.seed, device_id, round_id))


def test_devices_with_nothing_to_do_are_told_when_to_come_back(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=1, round_deadline_s=300.0, task_resend_s=30.0)
    devices = {d: ManualDevice(fleet, d, 5) for d in ("a", "b", "c")}
    fleet.drain()
    for d, m in devices.items():  # idle coordinator: come back after pace_idle_s (+ jitter)
        assert m.paces() == [Pace(d, _expected(fleet, d, pace.NO_ROUND, 1), pace.NO_ROUND)]
        assert 60.0 <= m.paces()[0].retry_after_s < 70.0

    assert fleet.coordinator.begin_round()
    fleet.drain()
    (chosen,) = fleet.coordinator.round.machine.selected
    others = sorted(set(devices) - {chosen})
    fleet.clock.advance(100.0)
    for d in others:
        devices[d].check_in()
    fleet.drain()
    for d in others:
        got = devices[d].paces()[-1]
        assert got == Pace(d, _expected(fleet, d, pace.NOT_SELECTED, 1), pace.NOT_SELECTED)
        assert 200.0 <= got.retry_after_s < 210.0  # what is left of the round, plus jitter

    # The selected device checks in again: it lost its task, so it gets the same one again,
    # at most once per task_resend_s however often it asks.
    sel = devices[chosen]
    for _ in range(3):
        sel.check_in()
    fleet.drain()
    sel.receive()
    tasks = [m for m in sel.inbox if isinstance(m, TrainTask)]
    assert len(tasks) == 2 and tasks[0].task_id == tasks[1].task_id
    assert tasks[1].deadline_s == pytest.approx(200.0)  # the time left, not a fresh deadline

    # An ineligible check-in and a decline both get the long backoff.
    devices[others[0]].check_in(eligible=False)
    fleet.drain()
    assert devices[others[0]].paces()[-1].reason == pace.INELIGIBLE
    task = sel.task()
    sel.send(encode_message(Decline(chosen, task.round_id, task.task_id, "battery_low")))
    fleet.drain()
    got = sel.paces()[-1]
    assert got == Pace(chosen, _expected(fleet, chosen, pace.DECLINED, 1), pace.DECLINED)
    assert got.retry_after_s >= 600.0
    m = fleet.coordinator.metrics
    assert m.pace.labels(pace.NO_ROUND)._value.get() == 3
    assert m.pace.labels(pace.NOT_SELECTED)._value.get() == 2


def test_a_device_that_reported_is_told_to_wait_for_the_next_round(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=2, round_deadline_s=300.0)
    a, b = ManualDevice(fleet, "a", 5), ManualDevice(fleet, "b", 6)
    fleet.drain()
    fleet.coordinator.begin_round()
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    a.send(encode_message(a.update(random_delta(shapes, np.random.default_rng(0)))))
    a.check_in()
    fleet.drain()
    assert a.paces()[-1] == Pace("a", _expected(fleet, "a", pace.REPORTED, 1), pace.REPORTED)
    assert [p.reason for p in b.paces()] == [pace.NO_ROUND]  # b only got the idle reply


def test_reason_for_follows_the_round_machine():
    m = sync_round(3, ("a", "b", "c"), target=2, quorum=1, deadline=100.0)
    assert pace.reason_for(None, "a", True) == pace.NO_ROUND
    assert pace.reason_for(None, "a", False) == pace.INELIGIBLE
    assert pace.reason_for(m, "a", True) is None  # selected and owes an answer: resend its task
    assert pace.reason_for(m, "a", False) is None  # ...even if ineligible now: it will decline
    assert pace.reason_for(m, "z", True) == pace.NOT_SELECTED
    m, _ = on_event(m, Replied("a"))
    m, _ = on_event(m, Declined("b", "battery_low"))
    assert pace.reason_for(m, "a", True) == pace.REPORTED
    assert pace.reason_for(m, "b", True) == pace.DECLINED
    m, _ = on_event(m, Tick(100.0))  # closed at the deadline, not yet ticked by the coordinator
    assert pace.reason_for(m, "z", True) == pace.NO_ROUND


def test_a_device_whose_last_will_says_offline_is_not_selected(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=2)
    ManualDevice(fleet, "a", 5)
    b = ManualDevice(fleet, "b", 6)
    fleet.drain()
    b.send(encode_message(Status("b", online=False)), channel="status")
    fleet.drain()
    assert fleet.coordinator.eligible_devices() == ["a"]
    assert fleet.coordinator.begin_round() and fleet.coordinator.round.machine.selected == ("a",)
    b.check_in()  # back online
    fleet.drain()
    assert sorted(fleet.coordinator.eligible_devices()) == ["a", "b"]


@pytest.mark.parametrize("reason,device_reason,remaining,want", [
    (pace.INELIGIBLE, "cpu_busy", 0.0, 30.0),  # load comes and goes: re-check soon, not in 600 s
    (pace.INELIGIBLE, "too_hot", 0.0, 120.0),
    (pace.DECLINED, "aborted:low_memory", 0.0, 60.0),  # an abort paces by its cause
    (pace.INELIGIBLE, "cpu_busy", 250.0, 250.0),  # an open round cannot take it: after the round
    (pace.INELIGIBLE, "battery_low", 0.0, 600.0),
    (pace.INELIGIBLE, "", 0.0, 600.0),  # no reason given: the configured backoff
    (pace.DECLINED, "aborted:deadline", 0.0, 600.0),
])
def test_ineligible_devices_are_paced_by_their_reason(reason, device_reason, remaining, want):
    assert pace.retry_after(reason, remaining, jitter=0.0, device_reason=device_reason, **KNOBS) == pytest.approx(want)
    short = dict(KNOBS, declined_s=5.0)  # declined_s caps every re-check
    assert pace.retry_after(reason, remaining, jitter=0.0, device_reason=device_reason, **short) == pytest.approx(
        max(5.0, remaining) if remaining else 5.0)


def test_a_busy_device_checking_in_is_asked_back_soon(model, tmp_path):
    fleet = make_fleet(model, tmp_path, clients_per_round=1)
    busy = ManualDevice(fleet, "busy", 5)
    fleet.drain()
    busy.check_in(eligible=False, reason="cpu_busy")
    fleet.drain()
    got = busy.paces()[-1]
    assert got.reason == pace.INELIGIBLE and 30.0 <= got.retry_after_s < 30.0 + KNOBS["jitter_s"]
