"""Facts read from sysfs/procfs (sysfs_facts.py) and the probe around them (probes.py), at the
edges the mutation7-agent audit found untested: each case is written by hand from the rule the
module's docstring states, at or just past its boundary."""

from __future__ import annotations

from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.probes import SystemProbe
from fedge.edge_runtime.sysfs_facts import classify_interface, read_link, read_power, read_temperature

ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text + "\n")
    return root


def _supply(name: str, **attrs: str) -> dict[str, str]:
    return {f"sys/class/power_supply/{name}/{k}": v for k, v in attrs.items()}


def _iface(name: str, arphrd: int = 1, operstate: str = "up", **extra: str) -> dict[str, str]:
    base = f"sys/class/net/{name}"
    return {f"{base}/type": str(arphrd), f"{base}/operstate": operstate, f"{base}/uevent": f"INTERFACE={name}",
            **{f"{base}/{k}": v for k, v in extra.items()}}


def _route(iface: str, flags: str, metric: int) -> str:
    return f"{iface}\t00000000\t0102A8C0\t{flags}\t0\t0\t{metric}\t00000000\t0\t0\t0"


def _zone(i: int, millideg: int) -> dict[str, str]:
    return {f"sys/class/thermal/thermal_zone{i}/type": "cpu-thermal",
            f"sys/class/thermal/thermal_zone{i}/temp": str(millideg)}


class Runner:
    def __init__(self):
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        return "GENERAL.METERED:yes\n"


# ---------------------------------------------------------------- power


@pytest.mark.parametrize("other, charging", [("Discharging", False), ("Unknown", None), ("Not charging", None)])
def test_discharging_only_when_every_battery_discharges(tmp_path, other, charging):
    # One battery that says nothing useful, no online supply: "cannot tell", not "on battery".
    root = _write(tmp_path, {**_supply("BAT0", type="Battery", capacity="70", status="Discharging"),
                             **_supply("BAT1", type="Battery", capacity="60", status=other)})
    assert read_power(root).charging is charging


@pytest.mark.parametrize("capacity, percent", [("-3", 0.0), ("0", 0.0), ("100", 100.0), ("104", 100.0)])
def test_a_capacity_out_of_range_is_clamped_to_0_100(tmp_path, capacity, percent):
    root = _write(tmp_path, _supply("BAT0", type="Battery", capacity=capacity, status="Discharging"))
    assert read_power(root).battery_percent == percent


def test_charge_counters_give_the_level_when_there_is_no_capacity(tmp_path):
    # Coulomb counters (µAh) rather than energy (µWh): 1,800,000 of 2,400,000 is 75 %.
    root = _write(tmp_path, _supply("BAT0", type="Battery", charge_now="1800000", charge_full="2400000",
                                    status="Discharging"))
    assert read_power(root).battery_percent == pytest.approx(100.0 * 1_800_000 / 2_400_000)


# ---------------------------------------------------------------- temperature


@pytest.mark.parametrize("millideg, counted", [(150_000, True), (150_001, False), (-40_000, True), (-40_001, False)])
def test_readings_from_minus_40_to_150_c_inclusive_count(tmp_path, millideg, counted):
    root = _write(tmp_path, {**_zone(0, millideg), **_zone(1, -45_000)})  # zone1: implausible, never counted
    assert read_temperature(root)[0] == (millideg / 1000.0 if counted else None)


def test_hwmon_is_not_read_when_a_zone_reads(tmp_path):
    root = _write(tmp_path, {**_zone(0, 41_000), "sys/class/hwmon/hwmon0/temp1_input": "88000"})
    assert read_temperature(root)[0] == 41.0


# ---------------------------------------------------------------- link


def test_a_default_route_that_is_not_up_is_no_default_route(tmp_path):
    # Flags 0x2 (RTF_GATEWAY without RTF_UP): wwan0's metric 0 route is down; wlan0's is the route.
    root = _write(tmp_path, {**_iface("wwan0"), **_iface("wlan0", phy80211="x"),
                             "proc/net/route": "\n".join([ROUTE_HEADER, _route("wwan0", "0002", 0),
                                                          _route("wlan0", "0003", 600)])})
    assert (read_link(root).link, read_link(root).interface) == ("wifi", "wlan0")


def test_a_raw_ip_interface_of_any_name_is_cellular(tmp_path):
    # ARPHRD_RAWIP (519): qmi_wwan in raw-IP mode, here under a name no prefix matches.
    root = _write(tmp_path, {**_iface("qmimux0", arphrd=519), **_iface("eth1", arphrd=512)})
    assert classify_interface(root, "qmimux0") == "cellular"
    assert classify_interface(root, "eth1") == "cellular"  # ARPHRD_PPP


def test_nmcli_is_not_asked_about_a_link_of_unknown_kind(tmp_path):
    # Only a tunnel is up and carries the default route: its kind is unknown, so is meteredness.
    root = _write(tmp_path, {**_iface("tun0", arphrd=65534, operstate="unknown", carrier="1"),
                             "proc/net/route": "\n".join([ROUTE_HEADER, _route("tun0", "0003", 0)])})
    runner = Runner()
    probe = SystemProbe(root, run=runner, clock=ManualClock(), metered_wait_s=5)
    facts = probe.read()
    probe.settle()
    assert (facts.link, facts.metered, runner.calls) == ("unknown", None, [])


def test_nmcli_is_asked_again_exactly_when_its_ttl_has_passed(tmp_path):
    root = _write(tmp_path, _iface("wlan0", phy80211="x"))
    runner, clock = Runner(), ManualClock()
    probe = SystemProbe(root, run=runner, clock=clock, metered_ttl_s=30.0, metered_wait_s=5)
    probe.read()
    probe.settle()
    clock.advance(29.5)
    probe.read()
    probe.settle()
    assert len(runner.calls) == 1
    clock.advance(0.5)  # 30.0 s after the first ask: due
    probe.read()
    probe.settle()
    assert len(runner.calls) == 2


# ---------------------------------------------------------------- idle CPU


_Times = namedtuple("_Times", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_idle_cpu_counts_iowait_as_idle_and_guest_once(monkeypatch, tmp_path):
    before = _Times(100.0, 0.0, 50.0, 400.0, 10.0, 0.0, 0.0, 0.0, 20.0, 0.0)
    # user +1.0 s, of which 0.2 s guest (Linux counts guest inside user); idle +0.5; iowait +0.5
    after = _Times(101.0, 0.0, 50.0, 400.5, 10.5, 0.0, 0.0, 0.0, 20.2, 0.0)
    readings = iter([before, after])
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(readings))
    probe = SystemProbe(tmp_path, run=lambda argv: None)
    busy, idle, iowait = 1.0, 0.5, 0.5  # the deltas by hand
    expected = 100.0 * (idle + iowait) / (busy + idle + iowait)
    assert probe.read().cpu_idle_percent == pytest.approx(expected)  # 50 %


def test_idle_cpu_starts_again_from_counters_that_went_back(monkeypatch, tmp_path):
    """proc(5): iowait may decrease, and a core taken offline takes its counters out of the sum.
    A reading under the baseline once kept the baseline, so every later reading measured
    against counters from before the drop and returned the old value until they caught up
    (here for ever: the next span, 2 s, is under the 50 s drop)."""
    base = _Times(1000.0, 0.0, 0.0, 1000.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    dropped = _Times(500.0, 0.0, 0.0, 450.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # a core's counters gone
    later = _Times(501.0, 0.0, 0.0, 451.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # +1 s busy, +1 s idle
    readings = iter([base, base, dropped, later])
    monkeypatch.setattr(psutil, "cpu_times", lambda: next(readings))
    probe = SystemProbe(tmp_path, run=lambda argv: None)
    assert probe.read().cpu_idle_percent is None  # no span yet: no reading
    assert probe.read().cpu_idle_percent is None  # the drop: nothing measured, the baseline moves
    assert probe.read().cpu_idle_percent == pytest.approx(100.0 * 1.0 / 2.0)  # measured from the drop
