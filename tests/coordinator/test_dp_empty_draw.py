"""An empty Poisson draw (coordinator/noise_round.py): not drawn again, but released as the
mechanism releases an empty sample, the round's noise alone, scaled by W and committed with one
charge, also when the coordinator stopped between the round's two store writes. Oracles: the
draw is sampling.poisson_sample's first with the round's key (no redraw), the model moves by N(0, (zS)^2) / W drawn
from (the round's noise key, seed, round) as a plain loop computes it, and the ledger holds one PoissonSampledDpEvent
charge per round."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.sampling import poisson_sample
from fedge.coordinator.store import RoundStore
from tests.coordinator.fleet import ManualDevice, copy_params, make_fleet, noise_entropy
from tests.coordinator.test_dp_rounds import DP, S, _privacy
from tests.tiny_model import build_tiny_model

IDS = ["m0", "m1", "m2"]  # 1 of 3 asked: q = 1/3, an empty draw with probability 8/27
KEY = "d1ce" * 8  # every round's noise key, which the draw also comes from (sampling.py): pinned to predict it


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _fleet(model, tmp_path, seed, z=1.0):
    fleet = make_fleet(model, tmp_path, clients_per_round=1, min_reports=1, round_deadline_s=5.0, seed=seed,
                       store=RoundStore(tmp_path / "s.db"), **DP,
                       privacy=_privacy(sampling="poisson", noise_multiplier=z))
    fleet.coordinator.privacy.noise_key = lambda round_id: KEY
    for device_id in IDS:
        ManualDevice(fleet, device_id, 10)
    fleet.drain()
    return fleet


def _empty_seed(round_id: int) -> int:
    return next(s for s in range(1000) if not poisson_sample(IDS, 1 / 3, s, round_id, KEY))


def _noise_only(old, charge, seed, round_id, z, cohort):
    """The plain-loop oracle: params + N(0, (z S)^2) from (the pinned noise key, seed, round) / W,
    in the params' order."""
    rng = np.random.default_rng(noise_entropy(KEY, seed, round_id))
    return {k: v + (rng.normal(0.0, z * S, size=v.shape) / cohort).astype(np.float32) for k, v in old.items()}


@pytest.mark.parametrize("z", [1.0, 3.0])
def test_an_empty_draw_commits_the_noise_alone_and_is_charged_once(model, tmp_path, z):
    first = RoundStore(tmp_path / "probe.db").next_round_id()
    seed = _empty_seed(first)
    fleet = _fleet(model, tmp_path, seed, z)
    c = fleet.coordinator
    old = copy_params(c.state.params)
    tasks = len(fleet.tasks())
    assert c.begin_round()  # no redraw: the round runs with nobody
    record = c.tick()
    assert record is not None and record.committed and (record.selected, record.reports) == (0, 0)
    assert c.round is None and c.tick() is None and c.state.version == 1
    want = _noise_only(old, c.store.privacy_ledger()[0], seed, first, z, cohort=1)
    for k in old:
        np.testing.assert_allclose(c.state.params[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    ledger = c.store.privacy_ledger()
    assert [(e["population"], e["cohort"], e["sampling"], e["noise_multiplier"]) for e in ledger] == [
        (3, 1, "poisson", z)]
    assert len(fleet.tasks()) == tasks  # no task left
    # the next round draws (seed, round + 1) as it falls, not a redraw of this one
    assert c.begin_round()
    assert (c.round is None) == (not poisson_sample(IDS, 1 / 3, seed, first + 1, KEY))


def _round_gauges(c) -> tuple[float, float, float]:
    """(fedge_round_id, fedge_round_open, committed rounds) as a scraper reads them."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(c.metrics.registry).decode()
    s = {(x.name, tuple(x.labels.values())): x.value for f in text_string_to_metric_families(text) for x in f.samples}
    return s[("fedge_round_id", ())], s[("fedge_round_open", ())], s[("fedge_rounds_total", ("committed",))]


def test_a_noise_only_round_is_exported_as_begun_like_any_round(model, tmp_path):
    """fedge_round_id, the latest round begun, stayed at the round before: dashboards keyed on it
    missed the noise-only round, which the ledger charged and the model moved by."""
    first = RoundStore(tmp_path / "probe.db").next_round_id()
    c = _fleet(model, tmp_path, _empty_seed(first)).coordinator
    assert c.begin_round() and c.tick().committed
    assert _round_gauges(c) == (first, 0, 1)


def _kill_between_the_two_writes(c, monkeypatch) -> None:
    """begin_round of a noise-only round, the process killed after its open row was written."""
    def killed(*_a, **_k):
        raise KeyboardInterrupt("killed between the round's two writes")
    monkeypatch.setattr(RoundStore, "commit_round", killed)
    with pytest.raises(KeyboardInterrupt):
        c.begin_round()
    monkeypatch.undo()


def test_a_restart_between_the_two_writes_runs_it_again_with_the_same_noise(model, tmp_path, monkeypatch):
    first = RoundStore(tmp_path / "probe.db").next_round_id()
    seed = _empty_seed(first)
    fleet = _fleet(model, tmp_path, seed)
    c = fleet.coordinator
    old = copy_params(c.state.params)

    _kill_between_the_two_writes(c, monkeypatch)
    assert c.store.load_open_round().selected == ()
    c = fleet.restart(store=RoundStore(tmp_path / "s.db"))
    record = c.tick()
    assert record is not None and record.committed and c.round is None
    want = _noise_only(old, c.store.privacy_ledger()[0], seed, first, 1.0, cohort=1)
    for k in old:
        np.testing.assert_allclose(c.state.params[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
    assert len(c.store.privacy_ledger()) == 1 and c.store.load_open_round() is None
    assert _round_gauges(c) == (first, 0, 1)  # the restarted process exports it as begun, then closed


def test_a_noise_only_round_left_open_is_not_resumed_as_an_async_buffer(model, tmp_path, monkeypatch):
    """Its row selects no device, as an async buffer's does: restarted with mode = "async" it was
    taken for an open buffer (of K, with a Poisson plan no async buffer has) instead of refused."""
    from fedge.coordinator.async_mode.config import AsyncConfig
    from fedge.edge_runtime.kernel.errors import ConfigError

    first = RoundStore(tmp_path / "probe.db").next_round_id()
    fleet = _fleet(model, tmp_path, _empty_seed(first))
    c = fleet.coordinator

    _kill_between_the_two_writes(c, monkeypatch)
    as_async = replace(c.config, mode="async", async_=AsyncConfig(concurrency=3, buffer_size=2),
                       privacy=replace(c.config.privacy, sampling="fixed"))
    with pytest.raises(ConfigError, match="is an open sync round; finish it with mode = 'sync'"):
        fleet.restart(store=RoundStore(tmp_path / "s.db"), config=as_async)


def test_two_noise_only_rounds_before_a_tick_both_reach_the_caller(model, tmp_path):
    """The record waiting for tick() was one slot: a second noise-only round begun before it
    (the loop goes on after a transport error) replaced the first's record."""
    first = RoundStore(tmp_path / "probe.db").next_round_id()
    seed = next(s for s in range(5000) if not poisson_sample(IDS, 1 / 3, s, first, KEY)
                and not poisson_sample(IDS, 1 / 3, s, first + 1, KEY))
    c = _fleet(model, tmp_path, seed).coordinator
    assert c.begin_round() and c.begin_round()
    records = [c.tick(), c.tick()]
    assert [r.round_id for r in records] == [first, first + 1] and all(r.committed for r in records)
    assert c.tick() is None and len(c.store.privacy_ledger()) == 2


def test_the_service_loop_takes_a_noise_only_round_as_begun_and_closed(model, tmp_path):
    """CoordinatorLoop told on_begin of the open round's machine, which a noise-only round has not."""
    from fedge.coordinator.loop import CoordinatorLoop
    first = RoundStore(tmp_path / "probe.db").next_round_id()
    fleet = _fleet(model, tmp_path, _empty_seed(first))
    begun = []
    loop = CoordinatorLoop(fleet.coordinator, min_devices=3, on_begin=begun.append)
    loop._maybe_begin()
    assert begun == [] and fleet.coordinator.round is None
    record = fleet.coordinator.tick()
    assert record.committed and record.round_id == first
