"""Device profiles: every shipped profile loads, and traces give known facts at known times.

Oracle for the battery: a naive second-by-second integration of drain and charge with
clamping, against fact_trace's piecewise closed form.
"""

from __future__ import annotations

import pytest

from fedge.edge_runtime.eligibility import EligibilityPolicy, evaluate
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.simulate.fact_trace import FactTrace, battery_at, facts_at
from fedge.tools.simulate.profiles import DeviceProfile, available_profiles, load_profile

SHIPPED = ("flaky-cellular", "jetson-nano", "phone-like", "pi4-ups")


def test_the_shipped_profiles_are_all_there():
    assert set(SHIPPED) <= set(available_profiles())


@pytest.mark.parametrize("name", available_profiles())
def test_every_shipped_profile_loads_and_replays(name):
    profile = load_profile(name)
    assert profile.name == name and profile.description
    assert profile.compute_speed > 0 and 0 <= profile.dropout_probability < 1
    clock = ManualClock()
    probe = profile.trace_probe(clock)
    for _ in range(48):  # two days in one-hour steps: every fact stays in range
        facts = probe.read()
        assert facts.battery_percent is None or 0 <= facts.battery_percent <= 100
        evaluate(EligibilityPolicy(), facts, "before")
        clock.advance(3600.0)


def test_pi4_ups_at_known_times():
    p = load_profile("pi4-ups")
    # 00:00-08:00 on mains: 90% + 1.5%/min, full after ~7 min.
    assert facts_at(p.trace, 0).battery_percent == 90.0
    assert facts_at(p.trace, 60).battery_percent == pytest.approx(91.5)
    assert facts_at(p.trace, 7 * 3600).battery_percent == 100.0
    # 08:00-12:00 on the cells at 0.3%/min: 10:00 is two hours in.
    ten = facts_at(p.trace, 10 * 3600)
    assert ten.charging is False and ten.battery_percent == pytest.approx(100 - 0.3 * 120)
    assert ten.local_time_minutes == 600
    # 13:00-14:00 the case is in the sun; the next day repeats the pattern.
    assert facts_at(p.trace, 13.5 * 3600).temperature_c == 74.0
    assert facts_at(p.trace, 15 * 3600).temperature_c == 58.0
    assert facts_at(p.trace, 86400 + 10 * 3600).battery_percent == pytest.approx(ten.battery_percent)
    assert facts_at(p.trace, 86400 + 10 * 3600).local_time_minutes == 600


def test_jetson_is_mains_powered_and_hot_ten_minutes_an_hour():
    p = load_profile("jetson-nano")
    facts = facts_at(p.trace, 100)
    assert (facts.battery_percent, facts.charging, facts.link) == (None, True, "ethernet")
    assert facts_at(p.trace, 3 * 3600 + 2500).temperature_c == 76.0
    assert evaluate(EligibilityPolicy(), facts_at(p.trace, 2500), "during") == "too_hot"


def test_flaky_cellular_is_metered_and_goes_offline():
    p = load_profile("flaky-cellular")
    assert evaluate(EligibilityPolicy(), facts_at(p.trace, 10), "before") == "metered_link"
    assert facts_at(p.trace, 250).link == "none" and facts_at(p.trace, 550).link == "none"
    assert facts_at(p.trace, 310).link == "cellular"


def test_phone_is_on_the_charger_overnight_and_offline_in_the_morning():
    p = load_profile("phone-like")
    assert facts_at(p.trace, 3 * 3600).charging is True
    assert facts_at(p.trace, 12 * 3600).charging is False
    assert facts_at(p.trace, 8.75 * 3600).link == "none"
    assert facts_at(p.trace, 23.5 * 3600).local_time_minutes == 23 * 60 + 30


def _naive_battery(trace: FactTrace, t: int) -> float:
    level = trace.battery_start_percent
    for s in range(t):
        phase = s % trace.period_s if trace.period_s else s
        on = any(a <= phase < b for a, b in trace.charging_s)
        rate = trace.charge_percent_per_min if on else -trace.drain_percent_per_min
        level = min(100.0, max(0.0, level + rate / 60.0))
    return level


@pytest.mark.parametrize("t", [0, 59, 300, 1234, 3599, 3600, 5000, 9999])
def test_battery_against_a_second_by_second_oracle(t):
    trace = FactTrace(battery_start_percent=20.0, drain_percent_per_min=3.0, charge_percent_per_min=7.0,
                      charging_s=((600.0, 900.0), (1500.0, 2400.0)), period_s=3000.0)
    assert battery_at(trace, t) == pytest.approx(_naive_battery(trace, t), abs=1e-9)


def test_profile_from_a_path_and_its_name_defaults_to_the_file(tmp_path):
    path = tmp_path / "solar-node.toml"
    path.write_text('compute_speed = 5\n[trace]\nbattery_start_percent = 40\ndrain_percent_per_min = 1\n'
                    'link = "cellular"\n')
    profile = load_profile(path)
    assert profile == DeviceProfile(name="solar-node", compute_speed=5.0,
                                    trace=FactTrace(battery_start_percent=40.0, drain_percent_per_min=1.0,
                                                    link="cellular"))
    assert load_profile(str(path)) == profile


@pytest.mark.parametrize("body", ['compute_speed = 0\n', 'dropout_probability = 1.0\n', 'colour = "red"\n',
                                  '[trace]\nlink = "pigeon"\n', '[trace]\ncharging_s = [[10, 5]]\n',
                                  '[trace]\nperiod_s = 60\noffline_s = [[30, 90]]\n',
                                  '[trace]\nbattery_start_percent = 120\n', '[trace]\nstart_local_time = "7pm"\n',
                                  '[trace]\ndrain_percent_per_min = -1\n', '[trace]\nhot_s = [[1, 2, 3]]\n'])
def test_bad_profile_is_a_config_error(tmp_path, body):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigError):
        load_profile(path)


def test_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="pi4-ups"):
        load_profile("toaster")
