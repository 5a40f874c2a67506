"""`fedge bench async`: the virtual fleet against plain loops of its formulas, the local step
against the device runtime run by hand, and a small run end to end (JSON keys, bytes = uploads x the
measured frame size, time to target read off the curve)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.edge_runtime.kernel.update_codec import decode_tensors
from fedge.tools.bench.async_bench import main
from fedge.tools.bench.async_runs import RunConfig, time_to
from fedge.tools.bench.device_task import DeviceTask
from fedge.tools.bench.label_skew import label_skew
from fedge.tools.bench.virtual_fleet import FleetModel, VirtualFleet
from fedge.tools.simulate.config import SimConfig
from fedge.tools.simulate.profiles import load_profile


def _fleet(n=2000, seed=0, **kw):
    sizes = np.random.default_rng(seed).integers(20, 200, size=n)
    return VirtualFleet(sizes, FleetModel(**kw), np.random.default_rng(seed))


def test_the_slow_tail_is_ten_times_slower_and_about_a_tenth_of_the_fleet():
    fleet = _fleet(speed_sigma=0.0)  # no log-normal spread: only profile and tail remain
    speed = np.array([p.compute_speed for p in fleet.profiles])[fleet.kind]
    ratio = fleet.seconds_per_example / (0.5 * speed)
    assert set(np.round(ratio, 9)) == {1.0, 10.0}
    assert np.array_equal(ratio > 1, fleet.slow)
    assert 0.08 < fleet.slow.mean() < 0.12  # 10% +- sampling noise at n = 2000
    spread = _fleet().seconds_per_example / (0.5 * speed * np.where(fleet.slow, 10.0, 1.0))
    assert abs(np.std(np.log(spread)) - 0.5) < 0.05  # LogNormal(0, 0.5)


def test_task_time_is_download_compute_upload():
    fleet = _fleet(n=50)
    times = fleet.task_seconds(3, 10_000, 2_000)
    for d in range(50):
        down, compute, up = fleet.times(d, 3, 10_000, 2_000)
        want = 10_000 / fleet.down_rate[d] + fleet.examples[d] * 3 * fleet.seconds_per_example[d] \
            + 2_000 / fleet.up_rate[d]
        assert down + compute + up == pytest.approx(want) == pytest.approx(times[d])


def test_availability_follows_the_profiles_windows():
    fleet = _fleet(n=300)
    phone = load_profile("phone-like").trace
    for d in range(300):
        trace = fleet.profiles[fleet.kind[d]].trace
        for t in np.linspace(0, 2 * 86400, 97):
            local = (t + fleet.phase[d]) % (trace.period_s or 86400)
            on_power = trace.battery_start_percent is None or any(a <= local < b for a, b in trace.charging_s)
            offline = any(a <= local < b for a, b in trace.offline_s)
            hot = any(a <= local < b for a, b in trace.hot_s)
            assert fleet.available(d, t) == (on_power and not offline and not hot)
    # a phone is on its charger 8 h of 24: about a third of phones are available at any time
    phones = [d for d in range(300) if fleet.profiles[fleet.kind[d]].trace == phone]
    share = np.mean([fleet.available(d, 3600.0) for d in phones])
    assert 0.2 < share < 0.45


def test_a_task_is_the_real_devices_update_as_the_coordinator_decodes_it():
    """Oracle: the same task run straight through DeviceRuntime, its Update's payload
    dequantized by the kernel's own decompress; and the frame is the measured upload size."""
    data = label_skew(4, seed=1)
    task = DeviceTask(data, seed=0, hidden=8)
    cfg = RunConfig(epochs=2, batch_size=7, lr=0.05)
    got = task.train(task.init, 1, cfg, salt=3)
    assert set(got) == set(task.shapes) and all(got[k].shape == task.shapes[k] for k in got)
    # int8 dense: every frame the size the clock charged, give or take msgpack's variable-length ints
    assert all(abs(size - task.bytes_up) <= 8 for size in task.frame_sizes)
    hyper = TaskHyper(epochs=2, batch_size=7, lr=0.05)
    c = data.clients[1]
    twin = DeviceRuntime("d00001", LocalData(c.x_train, c.y_train, c.x_test, c.y_test), {task.model_id: task.art_dir},
                         task.scratch / "twin", backend="portable", seed=0)
    update = twin.handle_task(task._task(task.init, 0, 3, "d00001", hyper))
    want = decompress_update(decode_tensors(update.payload))
    for k in want:  # the same seed, data and start: the same local SGD, bit for bit
        np.testing.assert_array_equal(got[k], want[k])
    assert float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in got.values()))) > 0  # it trained
    assert task.accuracy(task.init) == pytest.approx(np.mean(
        np.argmax(task.evaluator.predict(task.init, task.z_test)["global"], axis=1) == task.y_test))


def test_time_to_target_reads_the_first_crossing():
    curve = [(0.0, 0.1, 0), (10.0, 0.5, 100), (20.0, 0.7, 200), (30.0, 0.6, 300), (40.0, 0.8, 400)]
    assert time_to(curve, 0.65) == (20.0, 200)
    assert time_to(curve, 0.9) == (None, None)


def test_a_small_run_writes_the_must_show_keys(tmp_path):
    out = tmp_path / "async.json"
    assert main(["--json", str(out), "--quick", "--devices", "60", "--rounds", "4", "--data", "label-skew"]) == 0
    doc = json.loads(out.read_text())
    assert doc["target_accuracy"] == pytest.approx(0.95 * doc["sync"]["final_accuracy"])
    for name in ("sync", "async"):
        r = doc[name]
        assert {"time_to_target_seconds", "bytes_up", "final_accuracy"} <= set(r)
        assert r["bytes_up_total"] % doc["fleet"]["task_bytes_up"] == 0  # whole measured frames only
        if r["time_to_target_seconds"] is not None:
            assert time_to(r["curve"], doc["target_accuracy"]) == (r["time_to_target_seconds"], r["bytes_up"])
    assert (tmp_path / "async.md").exists()


def test_the_simulator_refuses_async_mode_instead_of_running_sync():
    with pytest.raises(ConfigError, match="sync rounds only"):
        SimConfig(coordinator=CoordinatorConfig(mode="async"))
    assert SimConfig(coordinator=CoordinatorConfig()).coordinator.mode == "sync"


def test_a_task_is_lost_when_its_device_drops_out_at_any_time_during_it():
    fleet = _fleet(n=200, seed=3)
    fleet.dropout[:] = 0.0  # only availability decides here
    rng = np.random.default_rng(0)
    lost_mid = 0
    for _ in range(600):
        d, start, seconds = int(rng.integers(200)), float(rng.uniform(0, 86400)), float(rng.uniform(10, 5000))
        steps = [start + k * 10.0 for k in range(int(seconds // 10) + 1)] + [start + seconds]
        want = not all(fleet.available(d, t) for t in steps)  # every 10 s: finer than any window
        assert fleet.lost(d, start, seconds, np.random.default_rng(1)) == want
        lost_mid += want and fleet.available(d, start) and fleet.available(d, start + seconds)
    assert lost_mid > 0  # some tasks were lost to a window that opened and closed inside them


class _OneDevice:
    """A fleet of one always-available device whose tasks take the given (down, compute, up)
    seconds, in turn."""

    def __init__(self, times):
        self._times = list(times)

    def __len__(self):
        return 1

    def available(self, device, t):
        return True

    def times(self, device, epochs, bytes_down, bytes_up):
        return self._times.pop(0)

    def lost(self, device, start, seconds, rng):
        return False


class _CountingTask:
    """A task whose deltas are numbered: the model's one value counts what was applied."""

    init = {"w": np.zeros(1, np.float32)}
    bytes_down, bytes_up = 100, 10
    clients = [type("Client", (), {"y_train": np.zeros(4)})()]

    def __init__(self):
        self.trained = 0

    def accuracy(self, params):
        return float(params["w"][0])

    def train(self, params, device, cfg, draw):
        self.trained += 1
        return {"w": np.full(1, float(self.trained), np.float32)}


def test_an_upload_that_lands_after_its_device_got_a_new_task_is_refused_not_taken_for_the_new_one():
    """Deadline 100 s. Task 1 (dispatched at 0) ends its upload at 150 s; the wake-up at 120 s
    expires it and gives the device task 2, which lands at 200 s. Oracle, by hand: task 1 is
    refused (stale_round) at 150 s, task 2's delta is the one step, at 200 s, and both uploads
    crossed the uplink. Keyed by device, task 1's arrival took task 2's delta and stepped at 150 s."""
    from fedge.tools.bench.async_runs import run_async

    cfg = RunConfig(concurrency=1, buffer_size=1, max_staleness=5, staleness_exponent=0.0,
                    async_deadline_factor=1.0)
    out = run_async(_CountingTask(), _OneDevice([(0.0, 90.0, 60.0), (0.0, 40.0, 40.0), (0.0, 1e9, 0.0)]),
                    cfg, until=230.0, sync_deadline=100.0)
    assert out["stale_rejected"] == 1 and out["versions"] == 1
    assert out["bytes_up_total"] == 2 * _CountingTask.bytes_up
    assert out["curve"][1] == (200.0, 2.0, 20)  # task 2's delta (the second trained), at its own time
