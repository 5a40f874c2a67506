"""The virtual fleet at its documented edges (tools/bench/virtual_fleet.py): the link medians,
a window's end, dropout, a task's checks every minute and at its end; each against a hand case
on a profile written here, whose windows are known to the second."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.tools.bench.virtual_fleet import FleetModel, VirtualFleet

# mains powered, one hour's period: offline [1000, 1070) (70 s: shorter than two checks), hot [2400, 3000)
PROFILE = """compute_speed = 1.0
dropout_probability = {dropout}

[trace]
period_s = 3600
offline_s = [[1000, 1070]]
hot_s = [[2400, 3000]]
"""


def _fleet(tmp_path, dropout=0.0, n=1, **kw):
    path = tmp_path / f"hour-{dropout}.toml"
    path.write_text(PROFILE.format(dropout=dropout))
    fleet = VirtualFleet(np.full(n, 10), FleetModel(profile_mix=((str(path), 1.0),), **kw), np.random.default_rng(0))
    fleet.phase[:] = 0.0  # local time = virtual time
    return fleet


def test_link_rates_are_log_normal_around_their_own_medians():
    sizes = np.full(4000, 10)
    flat = VirtualFleet(sizes, FleetModel(link_sigma=0.0), np.random.default_rng(1))
    assert set(flat.up_rate) == {50e3} and set(flat.down_rate) == {500e3}  # the documented medians
    spread = VirtualFleet(sizes, FleetModel(), np.random.default_rng(1))  # link_sigma 1, speed_sigma 0.5
    for rate, median in ((spread.up_rate, 50e3), (spread.down_rate, 500e3)):
        logs = np.log(rate / median)
        assert abs(np.median(logs)) < 0.06 and abs(logs.std() - 1.0) < 0.05


def test_a_window_holds_its_start_and_not_its_end(tmp_path):
    fleet = _fleet(tmp_path)
    got = {t: fleet.available(0, t) for t in (999.5, 1000.0, 1069.5, 1070.0, 2399.5, 2400.0, 2999.5, 3000.0)}
    assert got == {999.5: True, 1000.0: False, 1069.5: False, 1070.0: True,
                   2399.5: True, 2400.0: False, 2999.5: False, 3000.0: True}
    assert fleet.available(0, 3600.0 + 3000.0) and not fleet.available(0, 3600.0 + 2400.0)  # the period repeats


def test_a_task_is_looked_at_every_minute_and_at_its_end(tmp_path):
    fleet = _fleet(tmp_path)
    rng = np.random.default_rng(0)
    # starts 950: 950 and 1010 are checks (1 minute apart), 1010 is offline; two minutes apart it would pass
    assert fleet.lost(0, 950.0, 200.0, rng)
    assert not fleet.lost(0, 1070.0, 1329.0, rng)  # 1070 .. 2399: every check outside the windows
    # 2300, 2360 are available; its end, 2400, is the hot window's first second
    assert fleet.lost(0, 2300.0, 100.0, rng)
    assert not fleet.lost(0, 2300.0, 99.5, rng)


@pytest.mark.parametrize("dropout", [0.3, 0.9])
def test_a_task_drops_out_with_the_profiles_probability(tmp_path, dropout):
    """Oracle: lost's first draw from the task's RNG, compared with the profile's probability;
    the task itself (0 .. 10 s) is inside no window."""
    fleet = _fleet(tmp_path, dropout=dropout)
    assert fleet.dropout[0] == dropout
    got = [fleet.lost(0, 0.0, 10.0, np.random.default_rng(s)) for s in range(300)]
    assert got == [bool(np.random.default_rng(s).random() < dropout) for s in range(300)]
    assert 0 < sum(got) < 300
