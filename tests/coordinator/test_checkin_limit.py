"""One device cannot make the coordinator write and reply without end by checking in.

The limit is a token bucket per device (coordinator/checkin_limit.py); its oracle is the
generic cell rate algorithm (GCRA, ITU-T I.371), which tracks a theoretical arrival time instead
of a token count and admits exactly what a bucket of the same burst and rate admits."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.async_mode.server import AsyncCoordinator
from fedge.coordinator.checkin_limit import CheckInLimit
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.errors import CheckInTooOften
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import Pace
from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def gcra(times: list[float], burst: int, period: float) -> list[bool]:
    """Admit at t when t >= TAT - (burst - 1) * period; TAT = max(TAT, t) + period after each."""
    tat, admitted = -np.inf, []
    for t in times:
        ok = t >= tat - (burst - 1) * period - 1e-9
        if ok:
            tat = max(tat, t) + period
        admitted.append(ok)
    return admitted


@pytest.mark.parametrize("seed", range(5))
def test_the_bucket_admits_what_gcra_admits(seed):
    rng = np.random.default_rng(seed)
    burst, period = int(rng.integers(1, 12)), float(rng.uniform(0.5, 10.0))
    # bursts and lulls: most gaps far below the period, some far above
    gaps = np.where(rng.random(400) < 0.8, rng.exponential(period / 20, 400), rng.exponential(period * 5, 400))
    times = list(np.cumsum(gaps))
    limit = CheckInLimit(burst, period)
    got = [limit.refusal("d", t) is None for t in times]
    assert got == gcra(times, burst, period)
    assert 0 < sum(got) < len(got)  # the draw exercised both answers


def test_burst_then_one_per_refill_and_devices_apart():
    limit = CheckInLimit(3, 6.0)
    assert [limit.refusal("a", 0.0) is None for _ in range(4)] == [True, True, True, False]
    refused = limit.refusal("a", 5.9)
    assert isinstance(refused, CheckInTooOften) and refused.reason == "checkin_too_often"
    assert limit.refusal("b", 0.0) is None  # another device has its own budget
    assert limit.refusal("a", 6.0) is None and limit.refusal("a", 6.0) is not None
    assert [limit.refusal("a", 1e6) is None for _ in range(4)] == [True, True, True, False]  # capped at the burst


def test_zero_refill_means_no_limit():
    limit = CheckInLimit(1, 0.0)
    assert all(limit.refusal("a", 0.0) is None for _ in range(1000))


def test_the_table_forgets_devices_whose_bucket_refilled():
    limit = CheckInLimit(2, 1.0)
    for i in range(50_000):  # a new device id every 10 ms: 50,000 ids in 500 s
        assert limit.refusal(f"d{i}", i * 0.01) is None
    # only ids within the last burst * refill_s = 2 s can still be below a full bucket
    assert len(limit._buckets) <= 2 * max(1024, 2 * 200)


@pytest.mark.parametrize("bad", [dict(checkin_burst=0), dict(checkin_refill_s=-1.0),
                                 dict(checkin_refill_s=float("nan")), dict(checkin_refill_s=float("inf"))])
def test_config_refuses_a_limit_that_cannot_work(bad):
    with pytest.raises(ConfigError, match="checkin"):
        CoordinatorConfig(**bad)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_flooding_device_gets_no_writes_and_no_replies_past_its_budget(model, tmp_path, mode):
    modal = {} if mode == "sync" else dict(mode="async", async_=AsyncConfig(concurrency=2, buffer_size=2))
    fleet = make_fleet(model, tmp_path, checkin_burst=5, checkin_refill_s=6.0, **modal)
    c = fleet.coordinator
    assert isinstance(c, AsyncCoordinator) == (mode == "async")
    writes = []
    save_device = c.store.save_device
    c.store.save_device = lambda device: (writes.append(device), save_device(device))[1]
    flooder = ManualDevice(fleet, "flooder", 40)  # its first check-in
    honest = ManualDevice(fleet, "honest", 40, eligible=False)
    for i in range(200):  # eligibility flipping each time: every admitted one is a store write
        flooder.check_in(eligible=i % 2 == 1, reason="" if i % 2 else "cpu_busy")
    honest.check_in()  # arrives after the flood, and now says eligible
    fleet.drain()
    assert c.rejections["checkin_too_often"] == 201 - 5
    assert c.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": "checkin_too_often"}) == 196
    assert len([w for w in writes if w.device_id == "flooder"]) == 5
    assert len(flooder.paces()) == 5
    assert c.registry["honest"].eligible and honest.paces()[-1].reason == "no_round"
    fleet.clock.advance(6.0)  # one more check-in's worth
    flooder.check_in(eligible=False, reason="too_hot")
    flooder.check_in(eligible=True)
    fleet.drain()
    assert not c.registry["flooder"].eligible and c.registry["flooder"].reason == "too_hot"
    assert c.rejections["checkin_too_often"] == 197 and len(flooder.paces()) == 6
    assert all(isinstance(p, Pace) for p in flooder.paces())
