"""`fedge device probe`: a plain verdict with the numbers behind it, JSON on request, and a
CPU idle reading that is a number (a fresh probe used to report null)."""

from __future__ import annotations

import json

import pytest

from fedge.edge_runtime.eligibility import DeviceFacts, EligibilityPolicy, explain
from fedge.tools.cli import main
from tests.edge_runtime.test_probes import _supply, _write


def test_explain_gives_the_numbers():
    facts = DeviceFacts(cpu_idle_percent=2.4, battery_percent=30.0, temperature_c=81.0, free_memory_mb=150.0,
                        local_time_minutes=14 * 60 + 5)
    policy = EligibilityPolicy(min_cpu_idle_percent=50.0, window="01:00-06:00")
    assert explain(policy, facts, "cpu_busy") == "cpu_busy (idle 2% < 50%)"
    assert explain(policy, facts, "battery_low") == "battery_low (battery 30% < 50%)"
    assert explain(policy, facts, "too_hot") == "too_hot (81 C > 70 C)"
    assert explain(policy, facts, "low_memory") == "low_memory (free 150 MiB < 200 MiB)"
    assert explain(policy, facts, "outside_window") == "outside_window (local time 14:05 outside 01:00-06:00)"


def test_probe_prints_a_plain_verdict_and_a_real_cpu_reading(capsys):
    assert main(["device", "probe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "eligible: yes" or lines[0].startswith("eligible: no: "), lines[0]
    (cpu,) = [line.split() for line in lines if line.split()[:1] == ["cpu_idle_percent"]]
    assert 0.0 <= float(cpu[1]) <= 100.0  # a number, not "unknown"


def test_probe_json_and_a_failing_verdict(tmp_path, capsys):
    root = _write(tmp_path / "root", _supply("BAT0", type="Battery", capacity="30", status="Discharging"))
    config = tmp_path / "device.toml"
    # The battery is the fixture's; CPU idle and free memory are this machine's (psutil reads no
    # root), so both rules are off: a loaded host (under 200 MiB free) added "; low_memory (...)".
    config.write_text(f'[eligibility]\nmin_cpu_idle_percent = 0\nmin_free_memory_mb = 0\n[probe]\nroot = "{root}"\n')
    assert main(["device", "probe", "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "eligible: no: battery_low (battery 30% < 50%)"
    assert main(["device", "probe", "--config", str(config), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verdict"]["eligible"] is False and doc["verdict"]["before"] == "battery_low"
    assert doc["verdict"]["why"] == ["battery_low (battery 30% < 50%)"]
    assert isinstance(doc["facts"]["cpu_idle_percent"]["value"], float)


@pytest.mark.parametrize("probe, words", [
    ("probe = 1", "probe: expected a table, got int"),  # AttributeError: 'int' object has no attribute 'get'
    ("[probe]\nroot = 5", "probe.root: expected a string, got 5"),  # TypeError from Path(5)
    ('[probe]\nroot = ""', "probe.root must name a folder"),  # probed the current folder as the root
    ('[probe]\nrooot = "/x"', "probe: unknown key(s) 'rooot' (did you mean 'root'?)"),  # the typo ignored, / probed
])
def test_the_probe_table_is_read_as_device_run_reads_it(tmp_path, capsys, probe, words):
    """`device probe --config` read [probe] by hand: a value `fedge device run` refuses was a
    traceback here, or was ignored; it is read with the same ProbeConfig now."""
    config = tmp_path / "device.toml"
    config.write_text(probe + "\n")
    assert main(["device", "probe", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"ConfigError: device.toml: {words}" in err, err
