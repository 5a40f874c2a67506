"""The uplink's resend schedule at its documented edges (uplink.py: every `republish_s`, the
interval doubling up to 2**5 times while no Ack comes, back to the base after one; an update
nobody acknowledged for `pending_max_age_s` dropped), against the rule written as a plain
loop (mutation5-device audit)."""

from __future__ import annotations

from fedge.edge_runtime.journal import DeviceJournal
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.protocol import Update
from fedge.edge_runtime.uplink import Uplink

BASE = 10.0  # seconds


def _uplink(tmp_path, clock, max_age: float = 1e9):
    sent = []
    journal = DeviceJournal(tmp_path, clock=clock)
    update = Update(device_id="d1", round_id=3, task_id="t", update_id="u", model_id="m", base_version=2,
                    num_examples=5, payload=b"xyz")
    uplink = Uplink("d1", journal, lambda channel, payload, *shard: sent.append(payload), BASE, max_age)
    uplink.send_update(journal.keep(update), clock.now())
    return uplink, sent


def _resend_times(uplink, clock, until: float) -> list[float]:
    """Tick each second as the agent does; the times a resend went out."""
    times = []
    while clock.now() < until:
        clock.advance(1.0)
        if uplink.resend_due(clock.now()) and uplink.resend_all(clock.now()):
            times.append(clock.now())
    return times


def _expected(until: float, due: float = BASE, k: int = 0) -> list[float]:
    """The documented rule: after the k-th resend without an Ack the next waits BASE * 2**min(k, 5)."""
    times = []
    while due <= until:
        times.append(due)
        k = min(k + 1, 5)
        due += BASE * 2 ** k
    return times


def test_resends_double_up_to_2_to_the_5_and_fire_exactly_when_due(tmp_path):
    clock = ManualClock()
    uplink, sent = _uplink(tmp_path, clock)
    assert _resend_times(uplink, clock, 2000.0) == _expected(2000.0)
    assert len(sent) == 1 + len(_expected(2000.0))


def test_an_ack_brings_the_interval_back_to_the_base(tmp_path):
    """docs/PROTOCOL.md: the device resends every republish_s, doubling the interval while no Ack
    comes, and "resets it on any Ack or reconnect". The resend already planned once stood: after
    three resends, an Ack at t=75 left the next at 150 (75 s, 7.5 x BASE, away; up to 32 x BASE
    after a long backoff)."""
    clock = ManualClock()
    uplink, _ = _uplink(tmp_path, clock)
    times = _resend_times(uplink, clock, 75.0)  # 10, 30, 70: three resends without an Ack
    assert times == [10.0, 30.0, 70.0]
    uplink.acked(clock.now())  # an Ack for another update came; this one is still kept
    assert _resend_times(uplink, clock, 400.0) == _expected(400.0, due=75.0 + BASE) == [85.0, 105.0, 145.0, 225.0,
                                                                                        385.0]


def test_an_ack_never_puts_off_a_resend_that_is_nearer(tmp_path):
    clock = ManualClock()
    uplink, _ = _uplink(tmp_path, clock)
    clock.advance(7.0)
    uplink.acked(clock.now())  # the first resend, due at 10, stays at 10 (not 17)
    assert _resend_times(uplink, clock, 45.0) == _expected(45.0) == [10.0, 30.0]


def test_an_update_older_than_pending_max_age_is_dropped_from_disk_at_the_next_resend(tmp_path):
    clock = ManualClock()
    uplink, sent = _uplink(tmp_path, clock, max_age=25.0)
    assert _resend_times(uplink, clock, 29.0) == [10.0]  # 20 s old at the next: kept
    assert _resend_times(uplink, clock, 40.0) == []  # 30 s old at t=30: dropped, nothing left to send
    assert DeviceJournal(tmp_path).kept("u") is None
    assert len(sent) == 2  # sent once, resent once
