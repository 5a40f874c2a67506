"""The leader assigns shards: home shard if live, else the least-loaded live one; a round with no
live shard does not begin; a shard whose worker died mid-round (no spare) loses its uncounted
devices to a live shard, and no update is counted twice.

Real PostgreSQL, the in-memory broker, test_sharding's Cluster. Oracles: a plain loop of the
assignment rule (crc32 written out), and shard_reference's recomputation of the committed model
from the stored payloads grouped by the shard that counted each update.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.sharding.assign import assign, place
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import random_delta
from tests.coordinator.shard_reference import reference
from tests.coordinator.test_sharding import Cluster, K, model  # noqa: F401 - model: the module's fixture
from tests.pg_server import import_psycopg

psycopg = import_psycopg()
from fedge.coordinator.sharding.lease import ShardLease, live_shards  # noqa: E402
from fedge.coordinator.sharding.tables import COUNTED, DUPLICATE, WRONG_SHARD, Counted  # noqa: E402

# ---------------------------------------------------------------- the rule, pure


def _oracle(selected, shards, live):
    """The rule as a plain loop: crc32 home if live; the rest, in sorted id order, each onto the
    live shard with the fewest devices so far (homes counted), lowest index on ties."""
    out, load = {}, [0] * shards
    for d in selected:
        home = zlib.crc32(d.encode()) % shards
        if home in live:
            out[d] = home
            load[home] += 1
    for d in sorted(d for d in selected if d not in out):
        best = None
        for k in range(shards):
            if k in live and (best is None or load[k] < load[best]):
                best = k
        out[d] = best
        load[best] += 1
    return out


def test_the_assignment_is_the_plain_loops_over_random_fleets_and_live_sets():
    rng = np.random.default_rng(0)
    for _ in range(300):
        shards = int(rng.integers(1, 9))
        selected = [f"dev-{int(i)}" for i in rng.choice(10_000, int(rng.integers(1, 60)), replace=False)]
        live = {k for k in range(shards) if rng.random() < 0.6} or {int(rng.integers(0, shards))}
        got = assign(selected, shards, live)
        assert got == _oracle(selected, shards, live)
        assert set(got.values()) <= live
    every = [f"d{i}" for i in range(40)]
    assert assign(every, 4, range(4)) == {d: zlib.crc32(d.encode()) % 4 for d in every}  # all live: the hash
    with pytest.raises(ValueError, match="no live shard"):
        assign(every, 4, ())
    assert place(["b", "a", "c"], {0: 5, 2: 1}, [0, 1, 2]) == {"a": 1, "b": 1, "c": 2}  # ties: lowest index


def test_shard_takeover_s_is_validated():
    assert CoordinatorConfig().shard_takeover_s == 5.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="shard_takeover_s"):
            CoordinatorConfig(shard_takeover_s=bad)


# ---------------------------------------------------------------- with PostgreSQL


def _stop(c: Cluster, shard: int):
    """The worker of `shard` dies: its lease's session ends and nobody pumps it any more. Returns it."""
    dead = next(w for w in c.workers if w.shard == shard)
    dead.lease.close()
    c.workers.remove(dead)
    return dead


def _reference(c: Cluster, old, round_id: int):
    return reference(c.rows, K, round_id, old, c.strategy, len(c.devices))


def test_liveness_is_the_lease_lock(model, postgres_dsn):  # noqa: F811
    c = Cluster(model, postgres_dsn, devices=2)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert live_shards(conn, K) == {0, 1}
        _stop(c, 1)
        assert live_shards(conn, K) == {0}
        spare = ShardLease(postgres_dsn, 1)
        assert spare.try_acquire()
        assert live_shards(conn, K) == {0, 1}
        assert live_shards(conn, 1) == {0}  # only keys of shards below K
        spare.close()


def test_no_live_shard_no_round_and_a_dead_shard_gets_no_devices(model, postgres_dsn):  # noqa: F811
    c = Cluster(model, postgres_dsn, devices=12)
    for w in list(c.workers):
        _stop(c, w.shard)
    assert not c.leader.begin_round()
    assert c.leader.round is None
    assert c.leader.shard_metrics.not_begun.labels("no_live_shard")._value.get() == 1
    assert c.rows("SELECT count(*) FROM rounds") == [(0,)]
    c.workers.append(c.worker(1))  # shard 1 comes back; shard 0 stays dead
    old = c.leader.state
    assert c.leader.begin_round()
    c.pump()
    want = _oracle([d.id for d in c.devices], K, {1})
    assert set(want.values()) == {1}
    assert {d.id: d.task().shard for d in c.devices} == want
    assert dict(c.rows("SELECT device_id, shard FROM shard_assignment WHERE round_id = 1")) == want
    rng = np.random.default_rng(4)
    for d in c.devices:
        c.upload(d, random_delta(c.shapes, rng))
    c.pump()
    record = c.leader.tick()
    assert record is not None and record.committed and record.reports == 12
    new, counted = _reference(c, old, record.round_id)
    assert counted == 12
    for k in new:
        assert np.array_equal(c.leader.state.params[k], new[k]), k


def test_a_worker_killed_mid_round_its_uncounted_devices_move_and_the_round_commits_with_every_device(
        model, postgres_dsn):  # noqa: F811
    c = Cluster(model, postgres_dsn, devices=20, shard_takeover_s=5.0)
    old = c.leader.state
    assert c.leader.begin_round()
    c.pump()
    home = {d.id: d.task().shard for d in c.devices}
    on0 = [d for d in c.devices if home[d.id] == 0]
    assert len(on0) >= 4
    rng = np.random.default_rng(8)
    deltas = {d.id: random_delta(c.shapes, rng) for d in c.devices}
    early = on0[:2]  # counted by shard 0 before its worker dies
    for d in [d for d in c.devices if home[d.id] == 1] + early:
        c.upload(d, deltas[d.id])
    c.pump()
    dead = _stop(c, 0)
    late = on0[2:]
    for d in late:  # queued in the dead worker's session
        c.upload(d, deltas[d.id])
    assert c.leader.tick() is None  # shard 0 seen dead: the grace period starts
    assert c.rows("SELECT count(*) FROM shard_assignment WHERE shard = 1") == [(len(c.devices) - len(on0),)]
    c.clock.advance(4.9)
    assert c.leader.tick() is None and c.leader.shard_metrics.moves._value.get() == 0  # not yet
    c.clock.advance(0.2)
    assert c.leader.tick() is None
    moved = {d.id for d in late}
    assert c.leader.shard_metrics.moves._value.get() == len(late)
    assert dict(c.rows("SELECT device_id, shard FROM shard_assignment WHERE shard = 0")) == {d.id: 0 for d in early}
    for d in late:  # the task again, same task id, naming shard 1: the device sends the same update there
        task = d.task()
        assert task.shard == 1 and task.task_id == c.leader.round.ctx.tasks[d.id]
        c.upload(d, deltas[d.id])
    c.pump()
    # A spare takes shard 0 after all and drains the old session: the moved devices' copies are
    # refused by name, the early ones' resends are duplicates; nothing is added twice.
    queued = []
    while (msg := dead.transport.receive(0.0)) is not None:
        queued.append(msg)
    assert len(queued) == len(late)
    spare = c.worker(0)
    spare.handle_burst(queued)
    for d in early:
        c.upload(d, deltas[d.id])
    c.workers.append(spare)
    c.pump()
    for d in late:
        assert d.acks() == [(True, ""), (False, "wrong_shard")]  # counted on shard 1, then the old copy
    for d in early:
        assert d.acks() == [(True, ""), (True, "duplicate")]
    record = c.leader.tick()
    assert record is not None and record.committed and record.reports == 20, record
    rows = c.rows("SELECT device_id, shard FROM shard_updates WHERE round_id = %s", record.round_id)
    assert len(rows) == 20 and len({d for d, _ in rows}) == 20  # every device, once
    assert {d for d, s in rows if s == 1} >= moved
    new, counted = _reference(c, old, record.round_id)
    assert counted == 20
    for k in new:
        assert np.array_equal(c.leader.state.params[k], new[k]), k


def test_an_update_counted_on_one_shard_is_a_duplicate_on_another_never_a_second_add(model, postgres_dsn):  # noqa: F811
    """Behind the assignment check, the (round, device, update id) key: with the assignment row
    gone (a round opened before the table existed: the home shard counts), shard 0 offering a key
    shard 1 counted adds nothing."""
    c = Cluster(model, postgres_dsn, devices=4)
    assert c.leader.begin_round()
    c.pump()
    d = next(d for d in c.devices if d.task().shard == 0)
    w0, w1 = sorted(c.workers, key=lambda w: w.shard)
    delta = random_delta(c.shapes, np.random.default_rng(1))
    item = Counted((d.id, "u1"), "digest", 2.0, b"payload", delta)
    rid = c.leader.round.ctx.round_id
    assert w1.tables.count(1, w1.epoch, rid, [item], c.shapes, K) == [WRONG_SHARD]  # not its device
    with psycopg.connect(c.dsn, autocommit=True) as conn:
        conn.execute("UPDATE shard_assignment SET shard = 1 WHERE device_id = %s", (d.id,))
        assert w1.tables.count(1, w1.epoch, rid, [item], c.shapes, K) == [COUNTED]
        conn.execute("DELETE FROM shard_assignment WHERE device_id = %s", (d.id,))
    before = c.rows("SELECT shard, data, weight, count FROM shard_sums ORDER BY shard")
    assert w0.tables.count(0, w0.epoch, rid, [item], c.shapes, K) == [DUPLICATE]
    assert c.rows("SELECT shard, data, weight, count FROM shard_sums ORDER BY shard") == before
    assert c.rows("SELECT shard FROM shard_updates WHERE device_id = %s", d.id) == [(1,)]


def test_the_leader_never_moves_a_device_a_worker_is_counting(model, postgres_dsn):  # noqa: F811
    """reassign skips a row a worker's count holds locked (it waits for no one), and never moves a
    counted device."""
    c = Cluster(model, postgres_dsn, devices=8)
    assert c.leader.begin_round()
    c.pump()
    rid = c.leader.round.ctx.round_id
    on0 = sorted(d for d, k in c.leader.assignment.items() if k == 0)
    busy, counted, free = on0[0], on0[1], on0[2:]
    with psycopg.connect(c.dsn, autocommit=True) as conn:
        conn.execute("UPDATE shard_assignment SET counted = true WHERE device_id = %s", (counted,))
        with conn.transaction():  # a worker's count in flight on `busy`
            conn.execute("SELECT 1 FROM shard_assignment WHERE device_id = %s FOR UPDATE", (busy,))
            moves = c.leader.tables.reassign(rid, {0}, frozenset({1}), c.leader._check)
    assert moves == dict.fromkeys(free, 1)
    assert dict(c.rows("SELECT device_id, shard FROM shard_assignment WHERE shard = 0")) == {busy: 0, counted: 0}


def test_the_leader_reads_shard_liveness_once_a_second_mid_round_not_at_every_poll(model, postgres_dsn):  # noqa: F811
    c = Cluster(model, postgres_dsn, devices=4)
    assert c.leader.begin_round()
    reads, live_shards_of = [], c.leader.tables.live_shards

    def counted(shards):
        reads.append(c.clock.now())
        return live_shards_of(shards)

    c.leader.tables.live_shards = counted
    for _ in range(25):  # 2.5 s of polls, 0.1 s apart
        c.leader.tick()
        c.clock.advance(0.1)
    assert len(reads) == 3, reads  # at 0, 1.0 and 2.0 s (live_read_s), not 25 times
