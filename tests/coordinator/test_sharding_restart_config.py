"""A sharded leader restarted mid-round with another [coordinator] shards (K, or sharding on or off).

K is not stored with a round: a leader restarted with fewer shards must still aggregate every
update the workers acked, under any rule, and a coordinator that cannot see a round's accepted
updates (they are in the other ingest path's tables) must refuse to start by name rather than
resume the round without them. Leader, workers and devices as in test_sharding.py (in-memory
broker, real PostgreSQL). Oracle for the robust round: the single-machine rule fed the stored
updates (shard_reference.robust_reference).
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import make_strategy
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import HYPER, ManualDevice, make_fleet, random_delta
from tests.coordinator.shard_reference import dp_reference, robust_reference
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

psycopg = import_psycopg()
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402
from fedge.coordinator.sharding.leader import ShardedCoordinator  # noqa: E402
from tests.coordinator.test_sharding import Cluster, K  # noqa: E402
from tests.coordinator.test_sharding_robust_dp import DP, _poisoned, _privacy  # noqa: E402


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


def test_a_dp_round_counted_on_k_shards_is_noised_once_over_every_update_under_fewer(model, postgres_dsn):
    """Central DP on shards after the same restart: the merged clipped sum of every shard, noised
    once by the round's stored plan and charged once (shard_reference.dp_reference, over K)."""
    c = _counted_round(model, postgres_dsn, **DP, privacy=_privacy(noise_multiplier=1.0))
    old, round_id = c.leader.state, c.leader.round.ctx.round_id
    leader = _restart(c, model, ShardedCoordinator, shards=K - 1)
    leader.start()
    plan = json.loads(c.rows("SELECT privacy FROM rounds WHERE round_id = %s", round_id)[0][0])  # with its key
    record = leader.tick()
    assert record is not None and record.committed and record.reports == 10, record
    want, _, counted = dp_reference(c.rows, K, round_id, old, c.strategy, len(c.devices), plan, c.cfg.seed)
    assert counted == 10
    for k in want:
        assert np.array_equal(leader.state.params[k], want[k]), k
    assert [e["cohort"] for e in leader.store.privacy_ledger()] == [10]  # charged once


def test_a_sharded_round_is_refused_by_a_coordinator_restarted_without_shards(model, postgres_dsn):
    """Its acked updates are in shard_updates: a coordinator with shards = 0 resumed the round with
    none of them, and they were lost without a word."""
    c = _counted_round(model, postgres_dsn)
    with pytest.raises(ConfigError, match=r"open on 2 shard\(s\).*before turning sharding off"):
        _restart(c, model, Coordinator, shards=0)
    leader = _restart(c, model, ShardedCoordinator)  # with its shards it finishes, every update in
    leader.start()
    record = leader.tick()
    assert record is not None and record.committed and record.reports == 10, record


def unsharded_round_with_one_update(model, tmp_path, dsn, **config):
    """A fleet whose coordinator (shards = 0, store on `dsn`) has an open round that accepted one
    update, of two selected devices."""
    fleet = make_fleet(model, tmp_path, store=PostgresStore(dsn), clients_per_round=2, state_dsn=dsn, **config)
    devices = [ManualDevice(fleet, f"d{i}", 10) for i in range(2)]
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    devices[0].send(encode_message(devices[0].update(random_delta(fleet.coordinator.shapes,
                                                                  np.random.default_rng(0)))))
    fleet.drain()
    assert devices[0].acks() == [(True, "")]
    return fleet


def test_a_round_with_accepted_updates_is_refused_by_a_sharded_leader(model, postgres_dsn, tmp_path):
    """A round opened with shards = 0 holds its updates in the store: a sharded leader resumed it
    into the workers' sums, whose add raises (a TypeError traceback at every start)."""
    fleet = unsharded_round_with_one_update(model, tmp_path, postgres_dsn)
    _, manifest, runtime = model
    cfg = replace(fleet.coordinator.config, shards=K)
    assert isinstance(cfg, CoordinatorConfig) and cfg.hyper == HYPER
    with pytest.raises(ConfigError, match="holds 1 accepted update.*finish it with shards = 0"):
        ShardedCoordinator(fleet.broker.connect("coordinator"), make_strategy("fedavg", cfg.hyper), manifest,
                           runtime.initial("shared"), cfg, clock=fleet.clock, store=PostgresStore(postgres_dsn))


def test_devices_waiting_on_a_shard_beyond_the_new_k_move_to_a_live_one(model, postgres_dsn):
    """What the README says of a smaller K: a device assigned to shard K - 1 that has not uploaded
    yet is moved as from a dead shard, gets its task again naming a shard below K, and counts."""
    c = Cluster(model, postgres_dsn, devices=10)
    assert c.leader.begin_round()
    c.pump()
    late = [d for d in c.devices if d.task().shard == K - 1][:2]
    rng = np.random.default_rng(5)
    for d in c.devices:
        if d not in late:
            c.upload(d, random_delta(c.shapes, rng))
    c.pump()
    c.leader = _restart(c, model, ShardedCoordinator, shards=K - 1)
    c.leader.start()
    assert c.leader.tick() is None
    c.clock.advance(c.cfg.shard_takeover_s + 1.0)
    assert c.leader.tick() is None  # the move, and the tasks again
    c.pump()
    assert {d.task().shard for d in late} == {0}
    for d in late:
        c.upload(d, random_delta(c.shapes, rng))
    c.pump()
    record = c.leader.tick()
    assert record is not None and record.committed and record.reports == 10, record
