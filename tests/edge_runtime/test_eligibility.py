"""Eligibility policy (pure) and the monitor that turns it into DeviceRuntime's hooks.

Oracle for windows: a naive minute-by-minute set of allowed minutes, built by walking the
clock from start to end with wrap-around, compared with in_window for every minute of a day.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest

from fedge.edge_runtime.eligibility import (
    REASONS,
    DeviceFacts,
    EligibilityPolicy,
    evaluate,
    failing,
    in_window,
    load_policy,
    parse_window,
)
from fedge.edge_runtime.eligibility_monitor import EligibilityMonitor
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.probes import HEALTHY, FakeProbe

POLICY = EligibilityPolicy()
GOOD = DeviceFacts(battery_percent=80.0, charging=False, link="wifi", metered=False, temperature_c=45.0,
                   cpu_idle_percent=90.0, free_memory_mb=1024.0, local_time_minutes=12 * 60)


def _with(**changes) -> DeviceFacts:
    return dataclasses.replace(GOOD, **changes)


def test_healthy_device_is_eligible_in_both_phases():
    assert evaluate(POLICY, GOOD, "before") is None
    assert evaluate(POLICY, GOOD, "during") is None
    assert evaluate(POLICY, HEALTHY, "before") is None  # the fake's default is healthy too


@pytest.mark.parametrize(
    "policy, facts, reason",
    [
        (POLICY, _with(battery_percent=49.9), "battery_low"),
        (POLICY, _with(battery_percent=10.0, charging=True), "battery_low"),  # charging does not excuse it
        (EligibilityPolicy(require_charging=True), _with(charging=False), "not_charging"),
        (EligibilityPolicy(require_charging=True), _with(charging=None), "not_charging"),  # opt-in: unknown blocks
        (POLICY, _with(link="none"), "no_link"),
        (POLICY, _with(metered=True), "metered_link"),
        (POLICY, _with(link="unknown", metered=True), "metered_link"),  # the OS flag counts on any link
        (POLICY, _with(link="cellular", metered=None), "metered_link"),  # cellular is metered unless told
        (EligibilityPolicy(allow_metered=True), _with(link="cellular", metered=True), "metered_link"),  # not allowed
        (EligibilityPolicy(allowed_links=("ethernet",)), _with(link="wifi"), "link_not_allowed"),
        (POLICY, _with(temperature_c=70.5), "too_hot"),
        (POLICY, _with(cpu_idle_percent=19.0), "cpu_busy"),
        (POLICY, _with(free_memory_mb=150.0), "low_memory"),
        (EligibilityPolicy(window="01:00-06:00"), _with(local_time_minutes=7 * 60), "outside_window"),
        (EligibilityPolicy(window="01:00-06:00"), _with(local_time_minutes=None), "outside_window"),  # opt-in
    ],
)
def test_each_reason(policy, facts, reason):
    assert evaluate(policy, facts, "before") == reason
    assert failing(policy, facts, "before") == (reason,)  # nothing else fails: each case tests one thing


def test_every_documented_reason_is_reachable():
    worst = DeviceFacts(battery_percent=5.0, charging=False, link="wifi", metered=False, temperature_c=90.0,
                        cpu_idle_percent=1.0, free_memory_mb=1.0, local_time_minutes=12 * 60)
    policy = EligibilityPolicy(require_charging=True, allowed_links=("ethernet",), window="01:00-06:00")
    got = failing(policy, worst, "before")
    assert got == ("battery_low", "not_charging", "link_not_allowed", "too_hot", "cpu_busy", "low_memory",
                   "outside_window")
    assert set(got) | {"no_link", "metered_link"} == set(REASONS)
    assert evaluate(policy, worst, "before") == "battery_low"  # the first, in REASONS order


def test_boundaries_are_inclusive_for_the_device():
    edge = _with(battery_percent=50.0, temperature_c=70.0, cpu_idle_percent=20.0, free_memory_mb=200.0)
    assert evaluate(POLICY, edge, "before") is None


def test_cpu_idle_is_checked_before_but_never_during():
    busy = _with(cpu_idle_percent=0.0)
    assert evaluate(POLICY, busy, "before") == "cpu_busy"
    assert evaluate(POLICY, busy, "during") is None
    # Everything else aborts a running task.
    for facts in (_with(battery_percent=10.0), _with(link="none"), _with(temperature_c=95.0),
                  _with(free_memory_mb=10.0), _with(metered=True)):
        assert evaluate(POLICY, facts, "during") is not None


def test_unknown_facts_do_not_block():
    unknown = DeviceFacts()  # everything None, link "unknown"
    assert evaluate(POLICY, unknown, "before") is None
    assert evaluate(EligibilityPolicy(require_charging=True), unknown, "before") is None  # no battery: mains


def test_mains_powered_device_satisfies_require_charging():
    assert evaluate(EligibilityPolicy(require_charging=True, min_battery_percent=100), _with(battery_percent=None,
                    charging=None), "before") is None


def test_a_battery_of_unknown_level_that_discharges_fails_require_charging():
    on_battery = _with(battery_percent=None, charging=False)
    assert evaluate(EligibilityPolicy(require_charging=True), on_battery, "before") == "not_charging"
    assert evaluate(EligibilityPolicy(), on_battery, "before") is None  # unknown level alone does not block


def test_unmetered_cellular_is_fine_when_cellular_is_allowed():
    policy = EligibilityPolicy(allowed_links=("wifi", "ethernet", "cellular"))
    assert evaluate(policy, _with(link="cellular", metered=False), "before") is None
    assert evaluate(policy, _with(link="cellular", metered=None), "before") == "metered_link"


def _naive_window(start: int, end: int) -> set[int]:
    minutes, t = set(), start
    while t != end:
        minutes.add(t)
        t = (t + 1) % (24 * 60)
    return minutes


@pytest.mark.parametrize("text", ["01:00-06:00", "22:30-06:15", "23:59-00:00", "00:00-23:59", "12:00-11:59"])
def test_window_against_a_minute_by_minute_oracle(text):
    window = parse_window(text)
    allowed = _naive_window(*window)
    for minute in range(24 * 60):
        assert in_window(window, minute) == (minute in allowed), (text, minute)


def test_window_wrapping_midnight():
    policy = EligibilityPolicy(window="22:00-06:00")
    for hhmm, ok in [("21:59", False), ("22:00", True), ("23:30", True), ("00:00", True), ("05:59", True),
                     ("06:00", False), ("12:00", False)]:
        h, m = map(int, hhmm.split(":"))
        assert (evaluate(policy, _with(local_time_minutes=h * 60 + m), "during") is None) == ok, hhmm


@pytest.mark.parametrize(
    "changes",
    [
        {"min_battery_percent": 101.0},
        {"min_battery_percent": -1.0},
        {"min_battery_percent": float("nan")},
        {"min_cpu_idle_percent": 150.0},
        {"max_temperature_c": 500.0},
        {"min_free_memory_mb": -5.0},
        {"allowed_links": ()},
        {"allowed_links": ("wifi", "bluetooth")},
        {"allowed_links": ("none",)},
        {"window": "1am-6am"},
        {"window": "01:00-06:00-07:00"},
        {"window": "25:00-06:00"},
        {"window": "01:60-06:00"},
        {"window": "03:00-03:00"},
    ],
)
def test_bad_policy_is_a_config_error(changes):
    with pytest.raises(ConfigError):
        EligibilityPolicy(**changes)


def test_policy_from_toml(tmp_path):
    path = tmp_path / "device.toml"
    path.write_text('[eligibility]\nmin_battery_percent = 30\nallowed_links = ["wifi"]\nwindow = "23:00-05:00"\n'
                    "require_charging = true\n")
    policy = load_policy(path)
    assert policy == EligibilityPolicy(min_battery_percent=30.0, allowed_links=("wifi",), window="23:00-05:00",
                                       require_charging=True)
    assert policy.window_minutes == (23 * 60, 5 * 60)
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert load_policy(empty) == EligibilityPolicy()


@pytest.mark.parametrize("body", ['[eligibility]\nmin_batery_percent = 30\n', '[eligibility]\nwindow = 5\n',
                                  '[eligibility]\nallowed_links = ["wifi", "satellite"]\n',
                                  '[eligibility]\nrequire_charging = "yes"\n'])
def test_bad_policy_file_is_a_config_error(tmp_path, body):
    path = tmp_path / "device.toml"
    path.write_text(body)
    with pytest.raises(ConfigError):
        load_policy(path)


def test_bad_phase_or_link_is_refused():
    with pytest.raises(ValueError):
        evaluate(POLICY, GOOD, "after")
    with pytest.raises(ValueError):
        DeviceFacts(link="bluetooth")


# ---------------------------------------------------------------- the monitor


def test_monitor_before_always_reads_and_during_reads_at_most_once_per_interval():
    clock = ManualClock()
    probe = FakeProbe(GOOD)
    monitor = EligibilityMonitor(probe, POLICY, clock, check_interval_s=0.5)
    assert monitor.before() is None and probe.reads == 1
    assert monitor.before() is None and probe.reads == 2
    for _ in range(1000):  # a thousand steps inside one interval: no new reading
        assert monitor.during() is None
    assert probe.reads == 2
    probe.set(battery_percent=10.0)
    clock.advance(0.49)
    assert monitor.during() is None  # cached facts until the interval passes
    clock.advance(0.01)
    assert monitor.during() == "battery_low" and probe.reads == 3
    assert monitor.facts.battery_percent == 10.0 and monitor.read_at == clock.now()


def test_monitor_during_ignores_cpu_but_before_does_not():
    probe = FakeProbe(GOOD, cpu_idle_percent=5.0)
    monitor = EligibilityMonitor(probe, POLICY, ManualClock())
    assert monitor.before() == "cpu_busy"
    assert monitor.during() is None


def test_monitor_logs_verdict_changes_only(caplog):
    clock = ManualClock()
    probe = FakeProbe(GOOD)
    monitor = EligibilityMonitor(probe, POLICY, clock, check_interval_s=0.0, name="dev7")
    with caplog.at_level(logging.INFO, logger="fedge.eligibility"):
        for battery in (80, 70, 40, 30, 60, 65):
            probe.set(battery_percent=float(battery))
            monitor.during()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # eligible -> battery_low -> eligible
    assert "dev7" in lines[0] and "eligible -> battery_low" in lines[0] and "battery 40.0%" in lines[0]
    assert "battery_low -> eligible" in lines[1]


def test_monitor_refuses_a_negative_interval():
    with pytest.raises(ValueError):
        EligibilityMonitor(FakeProbe(), POLICY, check_interval_s=-1)
