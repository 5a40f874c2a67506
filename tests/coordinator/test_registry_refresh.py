"""The registry's last-seen refreshes (coordinator/registry.py): a device checking in unchanged
has its stored last_seen_wall refreshed in batches, one transaction at most every
REFRESH_FLUSH_S, spread over the fleet by a per-device interval, measured on the monotonic
clock; a change of facts is still written at once.

Oracles: the store as written (a recording store: every transaction and the rows it holds),
against the check-in times the test drove, and a plain recomputation of the bounds
(LAST_SEEN_WRITE_S x [0.5, 1), refresh_lag_s). Every clock is injected."""

from __future__ import annotations

import heapq
import logging
import sqlite3
from collections import Counter

import numpy as np
import pytest

from fedge.coordinator import registry
from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.errors import GroupCommitFailed, StoreGone, StoreLinkLost
from fedge.coordinator.leadership import FencedOut
from fedge.coordinator.memory_store import MemoryStore
from fedge.coordinator.metrics import CoordinatorMetrics
from fedge.coordinator.registry import (
    LAST_SEEN_WRITE_S,
    REFRESH_BATCH_MAX,
    REFRESH_FLUSH_S,
    Registry,
    refresh_interval,
    refresh_lag_s,
)
from fedge.coordinator.stored import StoredDevice
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import CheckIn, Pace, all_devices_topic, device_topic
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_loop_decisions import Stub, _run
from tests.tiny_model import build_tiny_model

T0 = 1_800_000_000.0


class Recording(MemoryStore):
    """A MemoryStore that notes each write transaction: (clock seconds, how many rows, one by one?)."""

    def __init__(self):
        super().__init__()
        self.now = 0.0
        self.txs: list[tuple[float, int, bool]] = []

    def save_device(self, device: StoredDevice) -> None:
        self.txs.append((self.now, 1, True))
        super().save_device(device)

    def save_devices(self, devices: list[StoredDevice]) -> None:
        self.txs.append((self.now, len(devices), False))
        super().save_devices(devices)


def test_a_fleet_whose_rows_all_went_old_is_written_in_batches_and_then_spreads_out():
    """A review's wave (20,000 devices there), smaller: 1,000 devices restored from rows a
    week old (an upgrade, or a restart after a long stop), checking in every ~15 min for 13 h with
    the same facts. Before: 1,000 one-row transactions in the first minutes, and ~500 again
    around 6 h (in phase). Now: at most one refresh transaction per REFRESH_FLUSH_S, none one by one,
    and after the first wave no minute writes more than a few percent of the fleet."""
    n, pace = 1000, 900.0
    wave = int(pace // 60) + 1  # the minutes of the first wave: every device's first check-in, and a flush
    store = Recording()
    for i in range(n):
        store.devices[f"d{i}"] = StoredDevice(f"d{i}", T0 - 7 * 86_400.0, True, "", 5)
    reg = Registry(store)
    reg.restore(0.0, T0)
    rng = np.random.default_rng(5)
    heap = [(float(rng.uniform(0, pace)), i) for i in range(n)]
    heapq.heapify(heap)
    truth: dict[str, float] = {}  # device -> the wall time of its latest check-in
    worst = 0.0  # the longest a row's written or queued time lagged its device's latest check-in, in intervals
    while heap and heap[0][0] <= 13 * 3600:
        t, i = heapq.heappop(heap)
        store.now = t
        reg.register(f"d{i}", True, "", 5, t, T0 + t, "fp")
        reg.flush_refreshes(t)  # the service loop's every turn (loop.py)
        truth[f"d{i}"] = T0 + t
        heapq.heappush(heap, (t + pace * float(rng.uniform(0.9, 1.1)), i))
        if t > wave * 60 and i % 241 == 0:  # after the first wave (rows a week old: too_soon's), every row vs the truth
            queued = reg.queued_refreshes
            held = {d: queued.get(d, store.devices[d].last_seen_wall) for d in truth}
            worst = max(worst, max((truth[d] - held[d]) / refresh_interval(d) for d in truth))
            assert all(T0 + t - w <= refresh_lag_s(n) for w in queued.values())  # queued only briefly
    assert all(not one_by_one for _, _, one_by_one in store.txs)  # no refresh on its own transaction
    times = [now for now, _, _ in store.txs]
    assert all(b - a >= REFRESH_FLUSH_S for a, b in zip(times, times[1:]))  # at most one a minute
    assert max(rows for _, rows, _ in store.txs) <= min(n, REFRESH_BATCH_MAX)
    per_minute = Counter()
    for now, rows, _ in store.txs:
        per_minute[int(now // 60)] += rows
    assert sum(v for m, v in per_minute.items() if m <= wave) == n  # the first wave: every row, within its pace
    later = max(v for m, v in per_minute.items() if m > wave)
    assert later <= n // 20, later  # spread: the in-phase code wrote ~n / 2 in each of two minutes at 6 h
    assert 0.9 < worst < 1  # a device's time lags by less than its interval (and the draw came close to it)
    queued = dict(reg.queued_refreshes)
    assert reg.drain_refreshes(lambda: 13 * 3600.0) == len(queued)  # a clean stop writes every queued one
    assert reg.queued_refreshes == {} and all(store.devices[d].last_seen_wall == w for d, w in queued.items())


def test_the_interval_is_stable_per_device_and_spread_within_half_to_all_of_six_hours():
    intervals = np.array([refresh_interval(f"device-{i}") for i in range(4000)])
    assert all(refresh_interval(f"device-{i}") == intervals[i] for i in range(0, 4000, 37))  # stable
    assert LAST_SEEN_WRITE_S * 0.5 <= intervals.min() and intervals.max() < LAST_SEEN_WRITE_S
    counts, _ = np.histogram(intervals, bins=10, range=(LAST_SEEN_WRITE_S * 0.5, LAST_SEEN_WRITE_S))
    assert counts.min() > 4000 / 10 * 0.8  # about uniform: no tenth of the range holds much less than its share
    assert refresh_interval("\n\x1b[2J\udcff") > 0  # any id the codec lets through (all but NUL)


def test_a_wall_clock_step_writes_nothing_the_monotonic_clock_did_not_call_for():
    """Before: abs(wall - stored) >= 6 h, so a wall clock stepped a day (NTP on a board without a
    real-time clock) wrote every device's row at its next check-in."""
    store = Recording()
    reg = Registry(store)
    for i in range(50):
        reg.register(f"d{i}", True, "", 5, 0.0, T0)
    store.txs.clear()
    for step in (86_400.0, -86_400.0):
        for i in range(50):
            store.now = 120.0
            reg.register(f"d{i}", True, "", 5, 120.0, T0 + step + 120.0)
    assert reg.flush_refreshes(120.0) == 0 and reg.queued_refreshes == {}
    assert store.txs == []


def test_a_change_of_facts_is_written_at_once_and_a_queued_refresh_does_not_overwrite_it():
    store = Recording()
    reg = Registry(store)
    reg.register("a", True, "", 5, 0.0, T0)
    reg.register("b", True, "", 5, 0.0, T0)
    t = LAST_SEEN_WRITE_S
    reg.register("b", True, "", 5, t, T0 + t)  # due: queued
    assert reg.flush_refreshes(t) == 1  # the first flush writes it at once
    reg.register("a", True, "", 5, t + 1, T0 + t + 1)  # due: queued
    assert reg.flush_refreshes(t + 1) == 0  # a flush was just made
    assert store.devices["a"].last_seen_wall == T0
    store.txs.clear()
    reg.register("a", False, "battery", 5, t + 2, T0 + t + 2)  # a change: written at once, as before
    assert store.txs == [(0.0, 1, True)]
    assert reg.flush_refreshes(t + 2 + REFRESH_FLUSH_S) == 0  # the queued one was dropped
    assert store.devices["a"] == StoredDevice("a", T0 + t + 2, False, "battery", 5)


def test_restore_records_once_when_this_build_began_refreshing():
    store = MemoryStore()
    Registry(store).restore(0.0, T0)
    Registry(store).restore(5.0, T0 + 86_400.0)  # a later restart keeps the first start's time
    assert store.refresh_began(T0 + 10 * 86_400.0) == T0


def test_the_service_loop_flushes_queued_refreshes_when_no_device_checks_in():
    """A queued refresh waits for the next flush; the loop makes one every turn once due, so the
    lag does not depend on another check-in coming."""
    stub = Stub()
    store = MemoryStore()
    reg = stub.registry = Registry(store)
    t = stub.clock.now()
    reg.register("a", True, "", 5, t, T0)
    reg.register("b", True, "", 5, t, T0)
    stub.clock.advance(LAST_SEEN_WRITE_S)
    t = stub.clock.now()
    reg.register("a", True, "", 5, t, T0 + LAST_SEEN_WRITE_S)  # queued, not written on the check-in's path
    assert store.devices["a"].last_seen_wall == T0
    assert reg.flush_refreshes(t) == 1  # a flush (the loop's) writes it
    reg.register("b", True, "", 5, t, T0 + LAST_SEEN_WRITE_S + 1)  # queued
    assert store.devices["b"].last_seen_wall == T0
    _run(stub, int(REFRESH_FLUSH_S / 0.05) + 20)  # the loop's polls, 0.05 s each: past one flush interval
    assert store.devices["b"].last_seen_wall == T0 + LAST_SEEN_WRITE_S + 1


def test_a_flush_writes_at_most_a_batch_and_a_clean_stop_drains_the_queue(monkeypatch):
    monkeypatch.setattr(registry, "REFRESH_BATCH_MAX", 3)
    store = Recording()
    reg = Registry(store)
    for i in range(9):
        reg.register(f"d{i}", True, "", 5, 0.0, T0)
    t = LAST_SEEN_WRITE_S
    reg.register("d0", True, "", 5, t, T0 + t)
    assert reg.flush_refreshes(t) == 1  # the first flush, at once
    for i in range(1, 9):
        store.now = t + i
        reg.register(f"d{i}", True, "", 5, t + i, T0 + t + i)  # queued
    store.txs.clear()
    assert reg.flush_refreshes(t + 30) == 0  # not yet a minute since the last flush
    assert reg.flush_refreshes(t + REFRESH_FLUSH_S) == 3  # the oldest queued first
    assert [store.devices[f"d{i}"].last_seen_wall - T0 for i in (1, 2, 3, 4)] == [t + 1, t + 2, t + 3, 0.0]
    assert reg.drain_refreshes(lambda: t + REFRESH_FLUSH_S + 1) == 5
    assert [rows for _, rows, _ in store.txs] == [3, 3, 2] and reg.queued_refreshes == {}
    assert all(store.devices[f"d{i}"].last_seen_wall == T0 + t + i for i in range(9))


class Refusing(MemoryStore):
    """save_devices refuses its first `failures` calls, with `error` (a full disk, a locked database);
    every call's device ids are noted."""

    def __init__(self, failures: float = 1, error: Exception | None = None):
        super().__init__()
        self.failures, self.error = failures, error or sqlite3.OperationalError("database or disk is full")
        self.batches: list[list[str]] = []

    def save_devices(self, devices: list[StoredDevice]) -> None:
        self.batches.append([d.device_id for d in devices])
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        super().save_devices(devices)


def _due(reg: Registry, t0: float, devices=("a", "b")) -> float:
    """`devices` known since t0, then checking in unchanged when due: each one's refresh queued."""
    for d in devices:
        reg.register(d, True, "", 5, t0, T0)
    t = t0 + LAST_SEEN_WRITE_S
    for i, d in enumerate(devices):
        reg.register(d, True, "", 5, t, T0 + t + i)
    return t


def test_a_failed_flush_puts_its_batch_back_for_the_next_flush_interval():
    """Before: the popped batch was lost, with each device's refresh_at moved ~6 h on, so its row
    could lag past refresh_lag_s and forget-devices take a device seen within N days for gone."""
    store = Refusing()
    reg = Registry(store)
    t = _due(reg, 0.0)
    with pytest.raises(sqlite3.OperationalError):
        reg.flush_refreshes(t)
    assert dict(reg.queued_refreshes) == {"a": T0 + t, "b": T0 + t + 1}  # back, with the times they held
    assert store.devices["a"].last_seen_wall == store.devices["b"].last_seen_wall == T0
    assert reg.flush_refreshes(t + REFRESH_FLUSH_S - 1) == 0  # retried a flush interval later, not every turn
    assert reg.flush_refreshes(t + REFRESH_FLUSH_S) == 2
    assert store.batches == [["a", "b"], ["a", "b"]] and reg.queued_refreshes == {}
    assert {d: store.devices[d].last_seen_wall for d in "ab"} == {"a": T0 + t, "b": T0 + t + 1}


def test_the_loop_counts_a_failed_flush_goes_on_and_writes_the_batch_at_the_next_interval(caplog):
    """Before: the store's error left the loop (and stopped the service) for a write that only
    refreshes times. Now it is logged, counted, and the next flush interval writes the batch."""
    stub = Stub()
    stub.metrics = CoordinatorMetrics()
    store = Refusing()
    reg = stub.registry = Registry(store)
    t = _due(reg, stub.clock.now())
    stub.clock.advance(t - stub.clock.now())
    with caplog.at_level(logging.ERROR, "fedge.coordinator"):
        loop = _run(stub, int(2 * REFRESH_FLUSH_S / 0.05))  # two flush intervals of 0.05 s polls
    assert stub.clock.now() >= t + 2 * REFRESH_FLUSH_S - 1  # the loop ran on past the failure
    assert store.batches == [["a", "b"], ["a", "b"]]  # failed once, written at the next interval, not again
    assert {d: store.devices[d].last_seen_wall for d in "ab"} == {"a": T0 + t, "b": T0 + t + 1}
    assert stub.metrics.registry.get_sample_value("fedge_store_refresh_failures_total") == 1
    assert loop.refresh_failures == 1
    assert "writing the queued last-seen refreshes failed (OperationalError: database or disk is full" in caplog.text


@pytest.mark.parametrize("error", [StoreGone("state_db deleted"), FencedOut("epoch 7 is newer"),
                                   GroupCommitFailed("burst not stored"), StoreLinkLost("link cut")],
                         ids=lambda e: type(e).__name__)
def test_a_flush_failing_with_an_error_that_stops_the_service_still_ends_the_loop(error):
    stub = Stub()
    stub.metrics = CoordinatorMetrics()
    reg = stub.registry = Registry(Refusing(error=error))
    t = _due(reg, stub.clock.now())
    stub.clock.advance(t - stub.clock.now())
    with pytest.raises(type(error)):
        _run(stub, 100)
    assert stub.metrics.registry.get_sample_value("fedge_store_refresh_failures_total") == 0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_check_in_while_the_store_refuses_refreshes_is_answered_and_does_no_store_work_for_others(
        model, tmp_path, mode):
    """Before: register() flushed the queue on the check-in's path; the store's error skipped the
    rest of the check-in (no Pace, no resend) after the record was replaced. Now a check-in writes
    only its own row's change, and the queue waits for the loop's flush."""
    store = Refusing(failures=float("inf"))
    config = dict(mode="async", async_=AsyncConfig(concurrency=3, buffer_size=3)) if mode == "async" else {}
    fleet = make_fleet(model, tmp_path, store=store, checkin_refill_s=0.0, **config)
    device = fleet.broker.connect("board")
    device.subscribe(all_devices_topic("task"))
    paced = []
    for ids in (["a", "b"], ["a", "b", "c"]):  # "c" is new: its row is written at once
        for d in ids:
            device.publish(device_topic(d, "checkin"), encode_message(CheckIn(d, eligible=True, num_examples=9)))
        fleet.drain()
        while (msg := device.receive(0.0)) is not None:
            if isinstance(decode_message(msg.payload), Pace):
                paced.append(msg.topic.split("/")[-2])
        fleet.clock.advance(LAST_SEEN_WRITE_S)
    assert paced == ["a", "b", "a", "b", "c"]  # every check-in answered
    reg = fleet.coordinator.registry
    assert set(reg.queued_refreshes) == {"a", "b"} and set(store.devices) == {"a", "b", "c"}
    assert store.batches == []  # the check-ins did no store work for other devices
    assert reg["a"].last_seen == reg["c"].last_seen == fleet.clock.now() - LAST_SEEN_WRITE_S


def test_a_failed_write_of_changed_facts_leaves_the_queued_refresh_queued():
    """A reviewer's repro: the queued refresh was dropped before save_device, so a failing last
    will's write (the device then gone) left its row at its old time for good."""

    class RefusingOneByOne(Recording):
        def save_device(self, device: StoredDevice) -> None:
            if device.reason == "offline":
                raise sqlite3.OperationalError("disk I/O error")
            super().save_device(device)

    store = RefusingOneByOne()
    reg = Registry(store)
    reg.register("d", True, "", 5, 0.0, T0)
    t = LAST_SEEN_WRITE_S
    reg.register("d", True, "", 5, t, T0 + t)  # due: queued
    assert dict(reg.queued_refreshes) == {"d": T0 + t}
    with pytest.raises(sqlite3.OperationalError):
        reg.register("d", False, "offline", 5, t + 1, T0 + t + 1)  # a last will whose write fails
    assert dict(reg.queued_refreshes) == {"d": T0 + t} and reg["d"].eligible
    assert reg.flush_refreshes(t + 1) == 1 and store.devices["d"].last_seen_wall == T0 + t
