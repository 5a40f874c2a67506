"""[robust.norm] device_clip: under norm_bound, once there is a history, the round's tasks ask
devices to clip to the round's clip bound (records.open_round), and real devices do, so what
an honest device sends is within the bound the coordinator enforces. Oracle: the bound is
recomputed from the committed history with numpy (multiplier x median), and each sent delta's
norm from the wire."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fedge.coordinator.dp.mechanism import global_norm
from fedge.coordinator.robust.aggregators import EXTRA_KEY, RobustConfig
from fedge.coordinator.robust.norm_bound import NormBoundConfig
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from tests.coordinator.fleet import decoded, make_fleet
from tests.tiny_model import build_tiny_model

SIZES = (30, 40, 25, 35, 50)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _norm(**kw) -> RobustConfig:
    # multiplier 1: the bound is the median, so about half of the honest deltas are over it and
    # the clip is at work; min_history 1: one round of history is enough to set it.
    return RobustConfig(norm=NormBoundConfig(**{"multiplier": 1.0, "exclude_multiplier": 0.0, "min_history": 1, **kw}))


def _round(fleet):
    c = fleet.coordinator
    assert c.begin_round()
    for _ in range(50):
        fleet.drain()
        fleet.clock.advance(1.0)
        record = c.tick()
        if record is not None:
            assert record.committed
            return record
    raise AssertionError("the round did not close")


def _tasks_and_updates(fleet, round_id):
    tasks = [t for t in fleet.tasks() if t.round_id == round_id]
    updates = [u for u in fleet.updates() if u.round_id == round_id]
    assert len(tasks) >= len(SIZES) and len(updates) == len(SIZES)
    return tasks, updates


def test_tasks_carry_the_rounds_bound_and_devices_send_within_it(model, tmp_path):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, aggregator="norm_bound", robust=_norm())
    first = _round(fleet)  # cold start: no history, the bound is unknown until the round ends
    tasks, updates = _tasks_and_updates(fleet, first.round_id)
    assert {t.compression.clip_norm for t in tasks} == {0.0}
    first_norms = [global_norm(decoded(u)) for u in updates]
    history = fleet.coordinator.state.extra[EXTRA_KEY]["norms"]
    np.testing.assert_allclose(sorted(history), sorted(first_norms), rtol=1e-6)

    second = _round(fleet)
    bound = 1.0 * float(np.median(history))
    tasks, updates = _tasks_and_updates(fleet, second.round_id)
    clips = {t.compression.clip_norm for t in tasks}
    assert len(clips) == 1 and clips.pop() == pytest.approx(bound, rel=1e-12)
    sent = [global_norm(decoded(u)) for u in updates]
    seen = [u.metrics["norm"] for u in updates]  # the device's norm before its clip
    assert all(n <= bound * (1 + 1e-6) for n in sent), (sent, bound)
    assert any(s > bound * 1.01 for s in seen), (seen, bound)  # the clip was at work on the device
    for s, n in zip(seen, sent):
        np.testing.assert_allclose(n, min(s, bound), rtol=1e-5)


@pytest.mark.parametrize("config", [
    dict(aggregator="norm_bound", robust=_norm(device_clip=False)),  # turned off
    dict(aggregator="mean"),  # no bound to send
    dict(aggregator="median", robust=_norm()),  # a keep-all rule: clips nothing
    # under the median: the history holds sent (clipped) norms, so the bound would shrink each round
    dict(aggregator="norm_bound", robust=_norm(multiplier=0.6)),
    # top-k: the device would clip the dense sum to a multiple of the sent (sparse) norms
    dict(aggregator="norm_bound", robust=_norm(), compression=CompressionSpec(quant_bits=8, topk_fraction=0.5)),
])
def test_no_device_clip_where_it_is_off_or_there_is_no_bound(model, tmp_path, config):
    fleet = make_fleet(model, tmp_path, sizes=SIZES, **config)
    _round(fleet)
    second = _round(fleet)
    tasks, _ = _tasks_and_updates(fleet, second.round_id)
    assert {t.compression.clip_norm for t in tasks} == {0.0}


def test_the_operators_own_clip_norm_is_kept(model, tmp_path):
    own = CompressionSpec(quant_bits=32, clip_norm=123.0)
    fleet = make_fleet(model, tmp_path, sizes=SIZES, aggregator="norm_bound", robust=_norm(), compression=own)
    _round(fleet)
    second = _round(fleet)
    tasks, _ = _tasks_and_updates(fleet, second.round_id)
    assert {t.compression.clip_norm for t in tasks} == {123.0}


def test_device_clip_must_be_a_boolean():
    from fedge.coordinator.robust.errors import BadRobustParameter
    with pytest.raises(BadRobustParameter, match="device_clip"):
        NormBoundConfig(device_clip=1)


class _Bound:
    """An aggregator as _device_clip sees it: only its task_clip."""

    def __init__(self, bound: float) -> None:
        self.task_clip = bound


@pytest.mark.parametrize("bound,config,clips", [
    (2.5, {}, True),
    (1e30, {}, True),  # the wire's largest clip_norm
    (1e31, {}, False),  # a history of absurd norms must not make every task unsendable
    (math.inf, {}, False),
    (2.5, {"mode": "async"}, False),  # staleness weights scale updates before the bound
])
def test_device_clip_only_where_the_bound_is_the_coordinators_and_fits_the_wire(bound, config, clips):
    from fedge.coordinator.config import CoordinatorConfig
    from fedge.coordinator.records import _device_clip
    from fedge.edge_runtime.kernel.codec import encode_message
    from fedge.edge_runtime.kernel.protocol import TrainTask

    cfg = CoordinatorConfig(**config)
    out = _device_clip(cfg, _Bound(bound))
    assert (out is not None) == clips
    if clips:
        assert out.clip_norm == bound and out == dataclasses.replace(cfg.compression, clip_norm=bound)
        encode_message(TrainTask(0, "t", "d", "m", 0, b"", hyper=cfg.hyper, compression=out, deadline_s=1.0, seed=0))


def test_the_screened_aggregator_and_an_initial_bound_report_the_bound_they_clip_with():
    from fedge.coordinator.robust.aggregators import RobustState, StreamingAggregator, _make
    from fedge.coordinator.robust.norm_bound import NormHistory
    from fedge.coordinator.robust.screened import ScreenedAggregator
    from fedge.coordinator.robust.screening import ScreenConfig

    cfg = NormBoundConfig()
    history = RobustState(NormHistory((1.0, 2.0, 3.0, 4.0, 5.0)))
    screened = ScreenedAggregator(cfg, ScreenConfig(), history, lambda params: 0.0)
    assert screened.task_clip == screened._limits()[0] == 2.0 * 3.0
    assert ScreenedAggregator(cfg, ScreenConfig(), RobustState(), lambda params: 0.0).task_clip == math.inf
    first = _make("norm_bound", RobustConfig(norm=NormBoundConfig(initial_bound=7.0)), RobustState(), None)
    assert isinstance(first, StreamingAggregator) and first.task_clip == 7.0  # known before any history
