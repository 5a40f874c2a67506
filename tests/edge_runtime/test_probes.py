"""Fact probes: SystemProbe over fixture sysfs/procfs trees, nmcli through an injected
runner, the fake, the trace probe, and describe(). One test runs on the real machine."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fedge.edge_runtime.eligibility import DeviceFacts, EligibilityPolicy, evaluate
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.probes import FakeProbe, SystemProbe, describe, parse_nmcli_metered, run_command
from fedge.edge_runtime.sysfs_facts import classify_interface, read_link, read_power, read_temperature
from fedge.tools.simulate.fact_trace import FactTrace
from fedge.tools.simulate.trace_probe import TraceProbe


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def _supply(name: str, **attrs: str) -> dict[str, str]:
    return {f"sys/class/power_supply/{name}/{k}": v for k, v in attrs.items()}


def _iface(name: str, arphrd: int = 1, operstate: str = "up", devtype: str | None = None, wireless=False, **extra):
    base = f"sys/class/net/{name}"
    files = {f"{base}/type": str(arphrd), f"{base}/operstate": operstate,
             f"{base}/uevent": f"INTERFACE={name}\nIFINDEX=3" + (f"\nDEVTYPE={devtype}" if devtype else "")}
    if wireless:
        files[f"{base}/wireless/"] = ""
    files.update({f"{base}/{k}": v for k, v in extra.items()})
    return files


def _route(iface: str, metric: int = 0) -> str:
    return f"{iface}\t00000000\t0102A8C0\t0003\t0\t0\t{metric}\t00000000\t0\t0\t0"


ROUTE_HEADER = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"


def _no_nmcli(argv):
    return None


# ---------------------------------------------------------------- power


def test_laptop_battery_discharging(tmp_path):
    root = _write(tmp_path, {**_supply("BAT0", type="Battery", capacity="42", status="Discharging"),
                             **_supply("AC", type="Mains", online="0")})
    facts = SystemProbe(root, run=_no_nmcli).read()
    assert (facts.battery_percent, facts.charging) == (42.0, False)


@pytest.mark.parametrize("status, online, charging", [("Charging", "0", True), ("Full", "0", True),
                                                      ("Not charging", "1", True), ("Not charging", "0", None),
                                                      ("Unknown", "0", None)])
def test_charging_means_on_external_power(tmp_path, status, online, charging):
    root = _write(tmp_path, {**_supply("BAT0", type="Battery", capacity="90", status=status),
                             **_supply("ADP1", type="Mains", online=online)})
    assert read_power(root).charging is charging


@pytest.mark.parametrize("capacity", ["", "abc"])
def test_a_battery_of_unreadable_level_still_says_it_discharges(tmp_path, capacity):
    # A fuel gauge that cannot say its level (ENODATA before calibration, garbage) is still a
    # battery: it read as "no battery, mains", and require_charging let a discharging board train.
    root = _write(tmp_path, {**_supply("BAT0", type="Battery", capacity=capacity, status="Discharging"),
                             **_supply("AC", type="Mains", online="0")})
    facts = SystemProbe(root, run=_no_nmcli).read()
    assert (facts.battery_percent, facts.charging) == (None, False)
    assert evaluate(EligibilityPolicy(require_charging=True), facts, "before") == "not_charging"
    assert evaluate(EligibilityPolicy(require_charging=True), facts, "during") == "not_charging"


def test_ups_hat_reports_as_a_ups_supply(tmp_path):
    # e.g. a fuel-gauge driver on a Pi UPS HAT: type UPS, energy counters but no capacity file
    root = _write(tmp_path, {**_supply("ups-hat", type="UPS", energy_now="3000000", energy_full="12000000",
                                       status="Discharging"),
                             **_supply("rpi-poe-power-supply", type="USB", online="0")})
    facts = SystemProbe(root, run=_no_nmcli).read()
    assert facts.battery_percent == pytest.approx(25.0)
    assert facts.charging is False


def test_lowest_battery_counts_and_peripherals_do_not(tmp_path):
    root = _write(tmp_path, {**_supply("BAT0", type="Battery", capacity="80", status="Discharging"),
                             **_supply("BAT1", type="Battery", capacity="35", status="Discharging"),
                             **_supply("hidpp_battery_0", type="Battery", scope="Device", capacity="5",
                                       status="Discharging"),
                             **_supply("BAT2", type="Battery", present="0", capacity="0")})
    assert read_power(root).battery_percent == 35.0


def test_mains_only(tmp_path):
    root = _write(tmp_path, {**_supply("AC", type="Mains", online="1")})
    facts = SystemProbe(root, run=_no_nmcli).read()
    assert (facts.battery_percent, facts.charging) == (None, True)


def test_no_power_supply_class_in_a_fixture_tree_is_mains(tmp_path):
    # psutil is only asked on the real root: a fixture tree must not see this machine's battery.
    facts, sources = SystemProbe(tmp_path, run=_no_nmcli).read_with_sources()
    assert (facts.battery_percent, facts.charging) == (None, None)
    assert "mains" in sources["battery_percent"]


# ---------------------------------------------------------------- link


@pytest.mark.parametrize(
    "files, link",
    [
        (_iface("wlan0", wireless=True), "wifi"),
        (_iface("wlp2s0", devtype="wlan"), "wifi"),
        (_iface("eth0"), "ethernet"),
        (_iface("enx00e04c680001"), "ethernet"),
        (_iface("wwan0", arphrd=519, devtype="wwan"), "cellular"),
        (_iface("cdc-wdm-net", devtype="wwan"), "cellular"),
        (_iface("ppp0", arphrd=512, operstate="unknown", carrier="1"), "cellular"),
        (_iface("usb0"), "cellular"),  # RNDIS / CDC-Ethernet LTE stick
        (_iface("tun0", arphrd=65534, operstate="unknown", carrier="1"), "unknown"),
    ],
)
def test_link_kind_of_the_only_interface_up(tmp_path, files, link):
    root = _write(tmp_path, {**files, **_iface("lo", arphrd=772, operstate="unknown")})
    assert read_link(root).link == link


def test_no_interface_up_is_no_link(tmp_path):
    root = _write(tmp_path, {**_iface("eth0", operstate="down"), **_iface("wlan0", operstate="dormant", wireless=True),
                             **_iface("lo", arphrd=772, operstate="unknown")})
    assert read_link(root).link == "none"
    assert SystemProbe(root, run=_no_nmcli).read().link == "none"


def test_ppp_without_carrier_is_down(tmp_path):
    root = _write(tmp_path, _iface("ppp0", arphrd=512, operstate="unknown", carrier="0"))
    assert read_link(root).link == "none"


def test_default_route_decides_between_interfaces_that_are_up(tmp_path):
    files = {**_iface("eth0"), **_iface("wlan0", wireless=True), **_iface("wwan0", devtype="wwan")}
    root = _write(tmp_path, {**files, "proc/net/route": "\n".join([ROUTE_HEADER, _route("wwan0", 100),
                                                                   _route("wlan0", 600)])})
    assert read_link(root).link == "cellular"
    # Without routes, the preference is the OS's usual one: wired, then Wi-Fi, then cellular.
    (root / "proc/net/route").write_text(ROUTE_HEADER + "\n")
    assert read_link(root).link == "ethernet"


def test_ipv6_only_default_route(tmp_path):
    v6 = ("00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
          "fe800000000000000000000000000001 00000400 00000003 00000000 00000003 wlan0")
    root = _write(tmp_path, {**_iface("eth0"), **_iface("wlan0", wireless=True),
                             "proc/net/route": ROUTE_HEADER, "proc/net/ipv6_route": v6})
    assert read_link(root).interface == "wlan0"


def test_vpn_default_route_is_judged_by_the_link_underneath(tmp_path):
    root = _write(tmp_path, {**_iface("wg0", arphrd=65534, operstate="unknown", carrier="1"),
                             **_iface("wwan0", devtype="wwan"),
                             "proc/net/route": "\n".join([ROUTE_HEADER, _route("wg0")])})
    assert read_link(root).link == "cellular"


def test_classify_interface_directly(tmp_path):
    root = _write(tmp_path, {**_iface("rmnet_data0", arphrd=519), **_iface("br0")})
    assert classify_interface(root, "rmnet_data0") == "cellular"
    assert classify_interface(root, "br0") == "ethernet"
    assert classify_interface(root, "missing0") == "unknown"


# ---------------------------------------------------------------- metered (nmcli)


class FakeRunner:
    def __init__(self, out: str | None):
        self.out = out
        self.calls: list[list[str]] = []

    def __call__(self, argv):
        self.calls.append(list(argv))
        return self.out


@pytest.mark.parametrize("out, metered", [("GENERAL.METERED:yes\n", True), ("GENERAL.METERED:no\n", False),
                                          ("GENERAL.METERED:yes (guessed)\n", True),
                                          ("GENERAL.METERED:no (guessed)\n", False),
                                          ("GENERAL.METERED:unknown\n", None), (None, None), ("", None)])
def test_nmcli_metered_flag(tmp_path, out, metered):
    root = _write(tmp_path, _iface("wlan0", wireless=True))
    runner = FakeRunner(out)
    assert SystemProbe(root, run=runner, metered_wait_s=30).read().metered is metered  # the first answer is waited for
    assert runner.calls == [["nmcli", "-t", "-f", "GENERAL.METERED", "dev", "show", "wlan0"]]


def test_nmcli_is_asked_at_most_once_per_ttl(tmp_path):
    root = _write(tmp_path, _iface("wlan0", wireless=True))
    runner, clock = FakeRunner("GENERAL.METERED:no\n"), ManualClock()
    probe = SystemProbe(root, run=runner, clock=clock, metered_ttl_s=30.0, metered_wait_s=30)
    for _ in range(5):
        probe.read()
        probe.settle()
        clock.advance(5.0)
    assert len(runner.calls) == 1
    clock.advance(10.0)
    probe.read()
    probe.settle()
    assert len(runner.calls) == 2


class BlockingRunner:
    """nmcli that hangs until the test lets it answer."""

    def __init__(self, out: str):
        self.out = out
        self.release = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def __call__(self, argv):
        self.calls += 1
        self.started.set()
        assert self.release.wait(30), "the test never let nmcli answer"
        return self.out


def test_a_reading_never_waits_for_a_slow_nmcli_once_it_has_an_answer(tmp_path):
    root = _write(tmp_path, _iface("wlan0", wireless=True))
    runner, clock = BlockingRunner("GENERAL.METERED:no\n"), ManualClock()
    runner.release.set()
    probe = SystemProbe(root, run=runner, clock=clock, metered_ttl_s=30.0, metered_wait_s=30)
    assert probe.read().metered is False
    runner.release.clear()
    runner.started.clear()
    runner.out = "GENERAL.METERED:yes\n"  # the user turned the hotspot into a metered link
    clock.advance(31.0)
    facts = probe.read()  # returns while nmcli still hangs: the last answer
    assert runner.started.wait(30) and not runner.release.is_set()
    assert facts.metered is False and runner.calls == 2
    assert probe.read().metered is False and runner.calls == 2  # one run in flight at a time
    runner.release.set()
    probe.settle()
    assert probe.read().metered is True


def test_without_an_answer_yet_a_reading_waits_only_briefly(tmp_path):
    root = _write(tmp_path, _iface("wlan0", wireless=True))
    runner = BlockingRunner("GENERAL.METERED:yes\n")
    probe = SystemProbe(root, run=runner, metered_wait_s=0.01)
    facts, sources = probe.read_with_sources()
    assert not runner.release.is_set()  # nmcli still hangs, yet the reading came back
    assert facts.metered is None and "still running" in sources["metered"]
    runner.release.set()
    probe.settle()
    assert probe.read().metered is True


def test_nmcli_not_asked_without_a_link(tmp_path):
    root = _write(tmp_path, _iface("eth0", operstate="down"))
    runner = FakeRunner("GENERAL.METERED:yes\n")
    assert SystemProbe(root, run=runner).read().metered is None
    assert runner.calls == []


def test_missing_command_gives_none():
    assert run_command(["fedge-no-such-command-xyz"]) is None
    assert parse_nmcli_metered("Error: Device 'wlan9' not found.") is None


# ---------------------------------------------------------------- temperature


def _zone(i: int, kind: str, millideg: str) -> dict[str, str]:
    return {f"sys/class/thermal/thermal_zone{i}/type": kind, f"sys/class/thermal/thermal_zone{i}/temp": millideg}


def test_temperature_is_the_hottest_zone_in_celsius(tmp_path):
    root = _write(tmp_path, {**_zone(0, "cpu-thermal", "48312"), **_zone(1, "GPU-therm", "61500"),
                             **_zone(2, "PMIC-Die", "100000"),  # Jetson's constant placeholder
                             **_zone(3, "bogus", "-273000"), **_zone(4, "broken", "")})
    value, source = read_temperature(root)
    assert value == pytest.approx(61.5)
    assert "thermal_zone1" in source
    assert SystemProbe(root, run=_no_nmcli).read().temperature_c == pytest.approx(61.5)


def test_hwmon_when_no_zone_reads(tmp_path):
    root = _write(tmp_path, {"sys/class/hwmon/hwmon0/temp1_input": "39000",
                             "sys/class/hwmon/hwmon1/temp2_input": "55250"})
    assert read_temperature(root)[0] == pytest.approx(55.25)
    assert read_temperature(tmp_path / "nothing")[0] is None


# ---------------------------------------------------------------- whole probe, fakes, traces


def test_pi_with_ups_hat_on_wifi_full_tree(tmp_path):
    root = _write(tmp_path, {**_supply("ups", type="Battery", capacity="64", status="Charging"),
                             **_iface("wlan0", wireless=True), **_iface("eth0", operstate="down"),
                             **_iface("lo", arphrd=772, operstate="unknown"), **_zone(0, "cpu-thermal", "57000"),
                             "proc/net/route": "\n".join([ROUTE_HEADER, _route("wlan0", 600)])})
    clock = ManualClock()
    facts, sources = SystemProbe(root, run=FakeRunner("GENERAL.METERED:no\n"), clock=clock).read_with_sources()
    assert (facts.battery_percent, facts.charging, facts.link, facts.metered, facts.temperature_c) == (
        64.0, True, "wifi", False, 57.0)
    assert 0 <= facts.local_time_minutes < 24 * 60
    assert facts.free_memory_mb > 0
    assert set(sources) == {f for f in DeviceFacts.__dataclass_fields__}
    assert "wlan0" in sources["link"] and "ups" in sources["battery_percent"]


def test_system_probe_on_this_machine_returns_facts():
    probe = SystemProbe()
    first = probe.read()
    second = probe.read()
    for facts in (first, second):
        assert isinstance(facts, DeviceFacts)
        assert facts.free_memory_mb is not None and facts.free_memory_mb > 0
        assert facts.cpu_idle_percent is None or 0 <= facts.cpu_idle_percent <= 100
        assert 0 <= facts.local_time_minutes < 24 * 60


def test_cpu_idle_is_measured_without_sleeping(tmp_path):
    import time

    probe = SystemProbe(tmp_path, run=_no_nmcli)
    deadline = time.monotonic() + 2.0
    while probe.read().cpu_idle_percent is None and time.monotonic() < deadline:
        sum(range(20000))  # let CPU time pass without sleeping in the probe
    assert 0 <= probe.read().cpu_idle_percent <= 100


def test_fake_probe_set_and_count():
    probe = FakeProbe(battery_percent=80.0)
    assert probe.read().battery_percent == 80.0
    probe.set(battery_percent=20.0, link="none")
    assert (probe.read().battery_percent, probe.read().link) == (20.0, "none")
    assert probe.reads == 3


def test_trace_probe_follows_the_clock():
    clock = ManualClock(start=100.0)
    trace = FactTrace(battery_start_percent=60.0, drain_percent_per_min=6.0, offline_s=((30.0, 40.0),))
    probe = TraceProbe(trace, clock)
    assert probe.read().battery_percent == 60.0
    clock.advance(35.0)
    facts = probe.read()
    assert facts.battery_percent == pytest.approx(56.5) and facts.link == "none"
    clock.advance(10.0)
    assert probe.read().link == "wifi"


def test_describe_is_json_with_a_source_for_every_fact(tmp_path):
    root = _write(tmp_path, {**_supply("BAT0", type="Battery", capacity="30", status="Discharging"),
                             **_iface("wwan0", devtype="wwan")})
    out = describe(SystemProbe(root, run=_no_nmcli), EligibilityPolicy())
    json.dumps(out)
    assert set(out["facts"]) == set(DeviceFacts.__dataclass_fields__)
    assert all(entry["source"] for entry in out["facts"].values())
    assert out["verdict"]["before"] == "battery_low"
    assert out["verdict"]["failing"][:2] == ["battery_low", "metered_link"]
    fake = describe(FakeProbe(), EligibilityPolicy())
    assert fake["facts"]["link"] == {"value": "ethernet", "source": "FakeProbe"} and fake["verdict"]["before"] is None


def test_a_route_line_that_is_not_numbers_is_no_route_and_a_huge_energy_no_level(tmp_path):
    """sysfs_facts promises never to raise: a route line with a non-hex flag or metric (a damaged
    or fake file) once raised ValueError and a huge energy_now OverflowError, so check-ins and
    tasks failed with no decline. Such a line is skipped (the good route still decides) and
    such a level is unknown."""
    files = {**_iface("eth0"), **_iface("wwan0", devtype="wwan")}
    bad = _route("eth0").replace("\t0003\t", "\tzz\t")
    root = _write(tmp_path, {**files, "proc/net/route": "\n".join([ROUTE_HEADER, bad, _route("wwan0", 100)]),
                             "proc/net/ipv6_route": "xyz 00 0 00 0 qq 0 0 zz eth0"})
    assert read_link(root).link == "cellular"  # the route that parses; eth0's bad line is not a route
    (root / "proc/net/route").write_text("\n".join([ROUTE_HEADER, _route("wwan0", 100).replace("\t100\t", "\tx\t")]))
    assert read_link(root).link == "ethernet"  # no route parses: the OS's usual preference
    root2 = _write(tmp_path / "p", _supply("BAT0", type="Battery", energy_now="9" * 400, energy_full="1",
                                           status="Discharging"))
    power = read_power(root2)
    assert power.battery_percent is None and power.charging is False
