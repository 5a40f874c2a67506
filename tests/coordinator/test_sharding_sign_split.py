"""[robust.sign] on a sharded fleet (coordinator/sharding/replay.py): the leader replays the
stored updates in (shard, seq) order into the aggregator one machine builds, so the gated sign
split runs on the round with the round's (seed, round) RNG. A leader, two workers and hand-driven
devices over the in-memory broker and a real PostgreSQL.

Oracles: the committed model equals, bit for bit, the single-machine aggregator fed the stored
updates in (shard, seq) order (shard_reference.robust_reference); the updates left out are the
ones an unsharded aggregator leaves out when fed them in upload order, and the flipped ones."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.aggregate import AggregatorContext, UpdateMeta, make_aggregator
from fedge.coordinator.robust.aggregators import RobustConfig
from fedge.coordinator.robust.sign_split import SignSplitConfig
from tests.coordinator.shard_reference import robust_reference
from tests.coordinator.test_sign_split_async import FLIPPED, K, _deltas, _flat, cold_start_mean
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

psycopg = import_psycopg()
from tests.coordinator.test_sharding import Cluster  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_sharded_round_leaves_out_what_one_machine_leaves_out(model, postgres_dsn):
    c = Cluster(model, postgres_dsn, devices=K, aggregator="norm_bound",
                robust=RobustConfig(sign=SignSplitConfig(gap=4.0)), weighting="equal")
    old = c.leader.state
    assert c.leader.begin_round()
    c.pump()
    deltas = _deltas(c.shapes, 21)
    for d, delta in zip(c.devices, deltas):
        c.upload(d, delta)
    c.pump()
    record = c.leader.tick()
    assert record is not None and record.committed, record
    flipped = {c.devices[i].id for i in FLIPPED}
    stored = [row[0] for row in c.rows("SELECT device_id FROM shard_updates WHERE round_id = %s ORDER BY shard, seq",
                                       record.round_id)]
    assert stored != [d.id for d in c.devices]  # the premise: the leader reads them in another order

    want, counted = robust_reference(c.rows, record.round_id, old, c.strategy, K, c.cfg)
    assert counted == K
    for name in want.params:
        assert np.array_equal(c.leader.state.params[name], want.params[name]), name
    assert c.leader.left_out.sign_split == {d: 1 for d in flipped} and not c.leader.left_out.excluded
    assert c.leader.metrics.registry.get_sample_value("fedge_updates_sign_split_total") == 2

    # one machine, the updates in upload order: the same ones left out, the same mean up to rounding
    one = make_aggregator("norm_bound", AggregatorContext(record.round_id, c.cfg.seed, c.cfg.robust, old.extra))
    for d, delta in zip(c.devices, deltas):
        one.add(delta, UpdateMeta(d.id, 1.0))
    mean = _flat(one.result())
    assert set(one.sign_split_ids) == flipped
    step = _flat(c.leader.state.params) - _flat(old.params)
    np.testing.assert_allclose(step, mean, rtol=0, atol=2e-7)
    np.testing.assert_allclose(step, cold_start_mean([_flat(x) for x in deltas], [1.0] * K, [1.0] * K,
                                                     set(FLIPPED)), rtol=0, atol=2e-7)
