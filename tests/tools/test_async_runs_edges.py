"""The drivers of `fedge bench async` (tools/bench/async_runs.py, async_bench.py) on hand-made
fleets whose every task time is given: the sync round's deadline, close, quorum, weights and
bytes, FedBuff's staleness weight and task deadline, time to target, the comparison's ratios,
--quick, and a fleet that never holds a quorum. Each expected value is worked out by hand from
the module docstring's rules."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.bench import async_bench
from fedge.tools.bench.async_runs import RunConfig, run_async, run_sync, time_to

STOPPED = (0.0, 1e9, 0.0)  # a task whose compute passes any deadline: it sends nothing


class _Fleet:
    """Always-available devices that never drop out; device d's k-th task takes times[d][k]
    (download, compute, upload) seconds, then STOPPED. task_seconds: what the deadline's
    percentile is taken over."""

    profiles = ()  # no profile given by path: the quorum wait looks a day ahead

    def __init__(self, times, task_seconds=(100.0,)):
        self._times = {d: list(t) for d, t in times.items()}
        self._task_seconds = np.asarray(task_seconds, np.float64)

    def __len__(self):
        return len(self._times)

    def available(self, device, t):
        return True

    def times(self, device, epochs, bytes_down, bytes_up):
        return self._times[device].pop(0) if self._times[device] else STOPPED

    def task_seconds(self, epochs, bytes_down, bytes_up):
        return self._task_seconds

    def lost(self, device, start, seconds, rng):
        return False


class _Task:
    """Device d's delta is values[d] in the model's one value, and it holds sizes[d] examples;
    accuracy is that value, so the curve shows the weighted mean that was applied."""

    init = {"w": np.zeros(1, np.float32)}
    bytes_down, bytes_up = 100, 10

    def __init__(self, values, sizes):
        self.values = values
        self.clients = [type("Client", (), {"y_train": np.zeros(s)})() for s in sizes]

    def accuracy(self, params):
        return float(params["w"][0])

    def train(self, params, device, cfg, salt):
        return {"w": np.full(1, self.values[device], np.float32)}


# 11 task times whose 90th percentile is 100 s exactly (and whose 10th is 10 s)
TASK_SECONDS = (0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 100.0, 200.0)


def test_a_full_sync_round_closes_at_its_last_wanted_report_and_counts_every_upload():
    """2 wanted, over-selection 2: all 4 asked (4 downloads). d0 ends at 50, d1 at 60; d2's
    download + compute is the deadline exactly (100 s, not past it), so it uploads, late (150);
    d3's passes it and sends nothing. The round closes at 60 with d0 and d1, weighted by their
    examples (1 and 3): (1 x 1 + 3 x 5) / 4 = 4; three uploads crossed."""
    fleet = _Fleet({0: [(0.0, 10.0, 40.0)], 1: [(0.0, 20.0, 40.0)], 2: [(0.0, 100.0, 50.0)], 3: [(0.0, 120.0, 10.0)]},
                   TASK_SECONDS)
    cfg = RunConfig(clients_per_round=2, over_selection=2.0, rounds=1)
    out = run_sync(_Task([1.0, 5.0, 100.0, 1000.0], [1, 3, 1, 1]), fleet, cfg)
    assert out["deadline_seconds"] == 100.0
    assert out["bytes_down_total"] == 4 * _Task.bytes_down and out["bytes_up_total"] == 3 * _Task.bytes_up
    assert out["curve"][1] == (60.0, 4.0, 30) and out["abandoned_rounds"] == 0


def test_a_sync_round_commits_at_its_quorum_and_is_abandoned_below_it():
    """3 wanted: quorum ceil(3 / 2) = 2. Round 1: d0 and d1 report, d2 is stopped; not full, so
    it closes at the deadline (100 s) and commits (1 x 1 + 3 x 5) / 4 = 4. Round 2: only d0
    reports, one short of the quorum: abandoned, the model stays."""
    fleet = _Fleet({0: [(0.0, 10.0, 10.0), (0.0, 10.0, 10.0)], 1: [(0.0, 20.0, 10.0)], 2: []})
    cfg = RunConfig(clients_per_round=3, over_selection=1.0, rounds=2)
    out = run_sync(_Task([1.0, 5.0, 7.0], [1, 3, 1]), fleet, cfg)
    assert out["curve"][1:] == [(100.0, 4.0, 20), (200.0, 4.0, 30)]
    assert out["abandoned_rounds"] == 1


def test_a_sync_round_closes_at_its_deadline_even_when_enough_uploads_land_after_it():
    """1 wanted, deadline 100 s: d0 computes by 50 s (inside the deadline) and its upload lands
    at 150 s. The round closes at the deadline with no report: abandoned, the upload counted.
    It once closed at the wanted-th upload wherever that fell: here at 150 s, committing d0."""
    fleet = _Fleet({0: [(0.0, 50.0, 100.0)]})
    out = run_sync(_Task([1.0], [1]), fleet, RunConfig(clients_per_round=1, over_selection=1.0, rounds=1))
    assert out["curve"][1] == (100.0, 0.0, 10) and out["abandoned_rounds"] == 1


class _Waiting(_Fleet):
    """Devices that are available (or not) at every moment; a wait past three days fails."""

    def __init__(self, devices, on):
        super().__init__({d: [] for d in range(devices)})
        self.on = on

    def available(self, device, t):
        assert t < 3 * 86400, "still waiting for a quorum after three simulated days"
        return self.on


@pytest.mark.parametrize("fleet", [_Waiting(3, on=False), _Waiting(1, on=True)],
                         ids=["never-available", "fewer-devices-than-the-quorum"])
def test_a_fleet_that_never_holds_a_quorum_is_refused_by_name_not_waited_on_forever(fleet):
    """It once waited in one-minute steps for ever: `fedge bench async --quick --devices 5`
    (quorum 10) never returned. The profiles repeat daily, so a day without a quorum is never."""
    with pytest.raises(ConfigError, match="quorum of 2"):
        run_sync(_Task([1.0] * 3, [1] * 3), fleet, RunConfig(clients_per_round=4, rounds=1))


class _TwoDayProfile(_Waiting):
    """A profile given by path whose trace repeats every two days, its devices on from day 1.5."""

    profiles = (SimpleNamespace(trace=SimpleNamespace(period_s=2 * 86400.0)),)

    def available(self, device, t):
        return t >= 1.5 * 86400


def test_the_quorum_wait_looks_as_far_ahead_as_the_longest_profile_period():
    """A day without a quorum is never only for traces that repeat within a day: a profile of a
    two-day period is waited on for its whole period (the round starts at day 1.5, then finds its
    devices sending nothing, STOPPED, and is abandoned), not refused after one day."""
    out = run_sync(_Task([1.0] * 3, [1] * 3), _TwoDayProfile(3, on=True), RunConfig(clients_per_round=4, rounds=1))
    assert out["abandoned_rounds"] == 1
    with pytest.raises(ConfigError, match="quorum of 2"):  # the same fleet with one device: refused
        run_sync(_Task([1.0], [1]), _TwoDayProfile(1, on=True), RunConfig(clients_per_round=4, rounds=1))


class _HugePeriod(_TwoDayProfile):
    """A profile given by path whose trace repeats every 10^9 s (31 years), its devices never on."""

    profiles = (SimpleNamespace(trace=SimpleNamespace(period_s=1e9)),)

    def __init__(self, devices):
        super().__init__(devices, on=False)
        self.asked = 0

    def available(self, device, t):
        self.asked += 1
        return False


def test_the_quorum_wait_looks_a_week_ahead_at_most():
    """A period of 10^9 s once meant a scan of 16.7 million minutes; the wait stops after a week
    (7 x 1,440 minutes and the first) and says so."""
    fleet = _HugePeriod(1)
    with pytest.raises(ConfigError, match="no minute of 7 simulated days has the sync round's quorum of 2"):
        run_sync(_Task([1.0], [1]), fleet, RunConfig(clients_per_round=4, rounds=1))
    assert fleet.asked == 7 * 1440 + 1


def test_fedbuff_weighs_a_stale_update_by_one_over_the_root_of_one_plus_its_staleness():
    """Concurrency 2, K = 1: d0 (delta 1) lands at 10 s on version 0 and makes version 1;
    d1 (delta 4), sent on version 0, lands at 20 s with staleness 1: 1 + 4 / sqrt(2)."""
    cfg = RunConfig(concurrency=2, buffer_size=1, max_staleness=5, staleness_exponent=0.5,
                    async_deadline_factor=1.0)
    out = run_async(_Task([1.0, 4.0], [2, 2]), _Fleet({0: [(0.0, 10.0, 0.0)], 1: [(0.0, 15.0, 5.0)]}), cfg,
                    until=50.0, sync_deadline=100.0)
    assert out["curve"][1] == (10.0, 1.0, 10)
    assert out["curve"][2][:2] == (20.0, pytest.approx(1.0 + 4.0 / np.sqrt(2.0), rel=1e-6))
    assert out["staleness"]["max"] == 1


def test_a_fedbuff_task_may_take_its_factor_times_the_sync_deadline():
    """Factor 2 on a 100 s sync deadline: a task computing for 150 s still lands (at 160 s)."""
    out = run_async(_Task([3.0], [1]), _Fleet({0: [(0.0, 150.0, 10.0)]}),
                    RunConfig(concurrency=1, buffer_size=1, async_deadline_factor=2.0), until=170.0,
                    sync_deadline=100.0)
    assert out["task_deadline_seconds"] == 200.0
    assert out["versions"] == 1 and out["curve"][1] == (160.0, 3.0, 10)


def test_the_target_counts_as_reached_at_exactly_the_target():
    assert time_to([(0.0, 0.2, 0), (5.0, 0.5, 7), (9.0, 0.6, 9)], 0.5) == (5.0, 7)


def test_speedup_is_sync_time_over_async_time_and_bytes_ratio_async_over_sync():
    sync = {"curve": [(0.0, 0.1, 0), (1000.0, 0.8, 50)]}
    asyn = {"curve": [(0.0, 0.1, 0), (250.0, 0.8, 20)]}
    doc = async_bench.compare(sync, asyn, 0.8)
    assert (doc["sync"]["time_to_target_seconds"], doc["async"]["bytes_up"]) == (1000.0, 20)
    assert doc["speedup"] == 4.0 and doc["bytes_ratio"] == 0.4
    assert "speedup" not in async_bench.compare(sync, asyn, 0.9)  # neither reached it: no ratio


class _Ran(Exception):
    pass


def test_quick_is_200_devices_20_a_round_concurrency_20_and_15_rounds(tmp_path, monkeypatch):
    def run(devices, cfg, data_name):
        raise _Ran(devices, cfg)

    monkeypatch.setattr(async_bench, "run", run)
    with pytest.raises(_Ran) as ran:
        async_bench.main(["--json", str(tmp_path / "a.json"), "--quick"])
    devices, cfg = ran.value.args
    assert (devices, cfg.clients_per_round, cfg.concurrency, cfg.rounds) == (200, 20, 20, 15)
    with pytest.raises(_Ran) as ran:
        async_bench.main(["--json", str(tmp_path / "a.json"), "--quick", "--rounds", "3", "--devices", "7"])
    assert ran.value.args[0] == 7 and ran.value.args[1].rounds == 3
