"""[robust.norm] device_clip: under norm_bound, once there is a history, the round's tasks ask
devices to clip to the round's clip bound (records.open_round), and real devices do, so what
an honest device sends is within the bound the coordinator enforces. Oracle: the bound is
recomputed from the committed history with numpy (multiplier x median), and each sent delta's
norm from the wire."""

from __future__ import annotations

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
    # multiplier 0.6: about half of the honest deltas are over the bound, so the clip is at work;
    # min_history 1: one round of history is enough to set it.
    return RobustConfig(norm=NormBoundConfig(**{"multiplier": 0.6, "exclude_multiplier": 0.0, "min_history": 1, **kw}))


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
    bound = 0.6 * float(np.median(history))
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
