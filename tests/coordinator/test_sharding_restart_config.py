"""A sharded leader restarted mid-round with another [coordinator] shards (K, or sharding on or off).

K is not stored with a round: a leader restarted with fewer shards must still aggregate every
update the workers acked, under any rule, and a coordinator that cannot see a round's accepted
updates (they are in the other ingest path's tables) must refuse to start by name rather than
resume the round without them. Leader, workers and devices as in test_sharding.py (in-memory
broker, real PostgreSQL). Oracle for the robust round: the single-machine rule fed the stored
updates (shard_reference.robust_reference).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.strategies import make_strategy
from tests.coordinator.shard_reference import robust_reference
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

psycopg = import_psycopg()
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402
from fedge.coordinator.sharding.leader import ShardedCoordinator  # noqa: E402
from tests.coordinator.test_sharding import Cluster, K  # noqa: E402
from tests.coordinator.test_sharding_robust_dp import _poisoned  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _restart(c: Cluster, model, cls, **change):
    """The leader's process again on the same database, its config changed (no fencing epoch)."""
    _, manifest, runtime = model
    cfg = replace(c.cfg, **change)
    leader = cls(c.broker.connect("coordinator"), make_strategy("fedavg", cfg.hyper), manifest,
                 runtime.initial("shared"), cfg, clock=c.clock, store=PostgresStore(c.dsn))
    leader.poll_s = 0.0
    return leader


def _counted_round(model, dsn, **config) -> Cluster:
    c = Cluster(model, dsn, devices=10, **config)
    assert c.leader.begin_round()
    c.pump()
    _poisoned(c, np.random.default_rng(3), set(), "u1")  # every device uploads, none poisoned
    assert sorted({r[0] for r in c.rows("SELECT shard FROM shard_updates")}) == list(range(K))
    return c


def test_a_robust_round_counted_on_k_shards_commits_every_update_under_a_leader_restarted_with_fewer(
        model, postgres_dsn):
    """The replay tallied the stored updates over this leader's K shards only, against the seal's
    sums of every shard: ReplayMismatch at every Aggregate, so the leader died at each start."""
    c = _counted_round(model, postgres_dsn, aggregator="median")
    old, round_id = c.leader.state, c.leader.round.ctx.round_id
    leader = _restart(c, model, ShardedCoordinator, shards=K - 1)
    leader.start()
    record = leader.tick()
    assert record is not None and record.committed and record.reports == 10, record
    want, counted = robust_reference(c.rows, round_id, old, c.strategy, len(c.devices), c.cfg)
    assert counted == 10
    for k in want.params:
        assert np.array_equal(leader.state.params[k], want.params[k]), k

