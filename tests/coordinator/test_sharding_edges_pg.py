"""The sharded coordinator's tables and leader at their documented edges, on a real PostgreSQL (the
mutation6-sharding audit): nothing is counted into a sealed round or one no longer open, a shard is
moved off at exactly shard_takeover_s and a shard that came back starts its grace anew.

test_sharding's Cluster; oracles: the rule of tables.py and leader.py written as the expected
rows, and the sums read before the refused count, compared bit for bit after it.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import Decline, TrainTask, shard_update_topic
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_sharding import Cluster, K, model  # noqa: F401 - model: the module's fixture
from tests.pg_server import import_psycopg

psycopg = import_psycopg()
from fedge.coordinator.sharding.replay import ReplayMismatch  # noqa: E402
from fedge.coordinator.sharding.tables import COUNTED, WRONG_SHARD, Counted, RoundClosed  # noqa: E402

SUMS = "SELECT shard, data, weight, count FROM shard_sums ORDER BY shard"


def _opened(c: Cluster) -> int:
    assert c.leader.begin_round()
    c.pump()
    return c.leader.round.ctx.round_id


def _item(c: Cluster, device_id: str, seed: int) -> Counted:
    return Counted((device_id, "u1"), "digest", 1.0, b"payload", random_delta(c.shapes, np.random.default_rng(seed)))


def test_a_sealed_round_counts_nothing_more_and_its_device_hears_stale_round(model, postgres_dsn):  # noqa: F811
    """tables.py: every add either committed before the seal, and is in what the leader read, or
    sees `sealed` and is refused (its device gets a stale_round Ack)."""
    c = Cluster(model, postgres_dsn, devices=4)
    rid = _opened(c)
    first, late = c.devices[0], c.devices[1]
    c.upload(first, random_delta(c.shapes, np.random.default_rng(1)))
    c.pump()
    sealed = c.leader.tables.seal(rid, K, c.shapes)
    assert sum(p.count for p in sealed) == 1
    before = c.rows(SUMS)
    c.upload(late, random_delta(c.shapes, np.random.default_rng(2)))
    c.pump()
    assert late.acks() == [(False, "stale_round")]
    assert c.rows(SUMS) == before
    assert c.rows("SELECT device_id FROM shard_updates") == [(first.id,)]


def test_a_round_abandoned_unsealed_counts_nothing_for_a_worker_that_still_thinks_it_open(model,  # noqa: F811
                                                                                         postgres_dsn):
    """An abandoned round is never sealed: the rounds row's status alone refuses the late count."""
    c = Cluster(model, postgres_dsn, devices=4, min_reports=4, round_deadline_s=10.0)
    rid = _opened(c)
    c.clock.advance(10.5)
    record = c.leader.tick()
    assert record is not None and not record.committed, record
    assert c.rows("SELECT status FROM rounds WHERE round_id = %s", rid) != [("open",)]
    assert c.rows("SELECT sealed FROM shard_rounds WHERE round_id = %s", rid) in ([], [(False,)])
    d = c.devices[0]
    w = next(w for w in c.workers if w.shard == c.leader.assignment[d.id])
    with pytest.raises(RoundClosed, match=f"round {rid} is not open"):
        w.tables.count(w.shard, w.epoch, rid, [_item(c, d.id, 3)], c.shapes, K)
    assert c.rows("SELECT count(*) FROM shard_updates") == [(0,)] and c.rows(SUMS) == []


def _stop(c: Cluster, shard: int) -> None:
    dead = next(w for w in c.workers if w.shard == shard)
    dead.lease.close()
    c.workers.remove(dead)


def _moves(c: Cluster) -> float:
    return c.leader.shard_metrics.moves._value.get()


def test_a_dead_shard_loses_its_devices_at_exactly_shard_takeover_s(model, postgres_dsn):  # noqa: F811
    """leader.py: a shard without a live worker FOR shard_takeover_s loses its uncounted devices:
    at 5.0 s of 5.0, not only after it."""
    c = Cluster(model, postgres_dsn, devices=8, shard_takeover_s=5.0)
    _opened(c)
    on0 = sorted(d for d, k in c.leader.assignment.items() if k == 0)
    assert on0
    _stop(c, 0)
    start = c.clock.now()
    assert c.leader.tick() is None and _moves(c) == 0  # seen dead: the grace starts
    c.clock.advance(5.0)
    assert c.clock.now() - start == 5.0
    assert c.leader.tick() is None
    assert _moves(c) == len(on0)
    assert {d: c.leader.assignment[d] for d in on0} == dict.fromkeys(on0, 1)


def test_a_shard_that_came_back_and_died_again_gets_a_new_grace(model, postgres_dsn):  # noqa: F811
    """The grace counts from when the shard was last seen without a worker after being live, not
    from its first death: dead at 0 s, a spare at 3 s, dead again at 4 s: moved at 9 s, not 5 s."""
    c = Cluster(model, postgres_dsn, devices=8, shard_takeover_s=5.0)
    _opened(c)
    on0 = sorted(d for d, k in c.leader.assignment.items() if k == 0)
    _stop(c, 0)
    assert c.leader.tick() is None  # 0 s: dead
    c.clock.advance(3.0)
    c.workers.append(c.worker(0))
    assert c.leader.tick() is None  # 3 s: live again
    c.clock.advance(1.0)
    _stop(c, 0)
    assert c.leader.tick() is None  # 4 s: dead again
    c.clock.advance(1.0)
    assert c.leader.tick() is None and _moves(c) == 0  # 5 s: 1 s of the new grace
    c.clock.advance(4.0)
    assert c.leader.tick() is None  # 9 s: 5 s since it died again
    assert _moves(c) == len(on0)


def test_a_partial_sum_longer_than_the_model_s_float64_sums_stops_the_seal_by_name(model, postgres_dsn):  # noqa: F811
    """rows.py: data is exactly the model's float64 sums; 8 bytes more is StoreCorrupt naming the
    column, not a ValueError from PartialSum.from_bytes."""
    c = Cluster(model, postgres_dsn, devices=4)
    rid = c.all_counted(seed=3)
    need = 8 * sum(int(np.prod(s)) for s in c.shapes.values())
    assert {len(data) for _, data, _, _ in c.rows(SUMS)} == {need}  # the oracle: as the workers wrote it
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE shard_sums SET data = data || '\\x0000000000000000'::bytea WHERE round_id = %s AND "
                     "shard = (SELECT min(shard) FROM shard_sums)", (rid,))
    with pytest.raises(StoreCorrupt, match=f"shard_sums\\.data holds '{need + 8} bytes'.*the {need} bytes"):
        c.leader.tables.seal(rid, K, c.shapes)


def test_a_round_without_assignment_rows_is_counted_on_each_device_s_home_shard_only(model,  # noqa: F811
                                                                                    postgres_dsn):
    """tables.py: a round opened before migration 3 has no assignment rows and falls back to the
    home shard crc32(id) mod K: another shard refuses the device (wrong_shard), the home one counts it."""
    c = Cluster(model, postgres_dsn, devices=4)
    rid = _opened(c)
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM shard_assignment WHERE round_id = %s", (rid,))
    d = c.devices[0]
    home = zlib.crc32(d.id.encode()) % K
    by_shard = {w.shard: w for w in c.workers}
    away = by_shard[1 - home]
    item = _item(c, d.id, 4)
    assert away.tables.count(away.shard, away.epoch, rid, [item], c.shapes, K) == [WRONG_SHARD]
    assert c.rows("SELECT count(*) FROM shard_updates") == [(0,)] and c.rows(SUMS) == []
    own = by_shard[home]
    assert own.tables.count(own.shard, own.epoch, rid, [item], c.shapes, K) == [COUNTED]
    assert c.rows("SELECT shard FROM shard_updates") == [(home,)]


def test_an_update_whose_task_names_another_shard_is_refused_on_the_right_topic(model, postgres_dsn):  # noqa: F811
    """worker.py: the topic's shard and the Update's own shard (its task's) must both be this
    shard; an Update that says it answers a task for the other shard is wrong_shard, not counted."""
    c = Cluster(model, postgres_dsn, devices=4)
    _opened(c)
    d = c.devices[0]
    task = d.task()
    update = d.update(random_delta(c.shapes, np.random.default_rng(5)), "u1", shard=1 - task.shard)
    d.t.publish(shard_update_topic(task.shard, d.id), encode_message(update))
    c.pump()
    assert d.acks() == [(False, "wrong_shard")]
    assert c.rows("SELECT count(*) FROM shard_updates") == [(0,)]


def test_a_stored_update_on_a_shard_without_a_sum_stops_the_replay_by_name(model, postgres_dsn):  # noqa: F811
    """replay.py: the rows read must match the sealed sums' per-shard counts. A row added on a shard
    that has no sum at all (here a copy of a counted row, as shard 5 of K = 2) left every counted
    shard's tally intact and was fed to the rule: a model of 5 updates where the workers acked 4."""
    c = Cluster(model, postgres_dsn, devices=4, aggregator="median")
    rid = c.all_counted(seed=6)
    c.rows("INSERT INTO shard_updates (round_id, device_id, update_id, shard, seq, digest, weight, payload) "
           "SELECT round_id, device_id, 'copy', 5, 0, digest, weight, payload FROM shard_updates "
           "WHERE round_id = %s AND device_id = %s RETURNING 1", rid, c.devices[0].id)
    with pytest.raises(ReplayMismatch, match=r"stored updates per shard \[\d, \d, 0, 0, 0, 1\]"):
        c.leader.tick()
    assert c.leader.state.version == 0


def test_a_device_that_declined_gets_no_task_again_when_its_dead_shard_s_devices_move(model,  # noqa: F811
                                                                                   postgres_dsn):
    """A device that declined is no longer expected: its worker would refuse its update (declined),
    so asking it again only made it train for nothing. The devices still expected get the task
    again naming the live shard; the one that declined hears nothing more."""
    c = Cluster(model, postgres_dsn, devices=8, shard_takeover_s=5.0)
    _opened(c)
    on0 = [d for d in c.devices if c.leader.assignment[d.id] == 0]
    assert len(on0) >= 2
    quitter, task = on0[0], on0[0].task()
    quitter.send(encode_message(Decline(quitter.id, task.round_id, task.task_id, "battery_low")))
    c.pump()
    assert c.leader.declines["battery_low"] == 1
    _stop(c, 0)
    assert c.leader.tick() is None
    c.clock.advance(5.0)
    assert c.leader.tick() is None and _moves(c) >= len(on0) - 1
    c.pump()
    for d in on0:
        d.receive()
    for d in on0[1:]:
        assert [t.shard for t in d.inbox if isinstance(t, TrainTask)] == [0, 1], d.id
    assert [t.shard for t in quitter.inbox if isinstance(t, TrainTask)] == [0]


def test_a_key_counted_between_the_worker_s_read_and_its_transaction_is_acked_as_a_duplicate(model,  # noqa: F811
                                                                                            postgres_dsn):
    """worker.py: tables.count's DUPLICATE (the key was counted after admission read the keys, by
    a concurrent transaction) is an accepted Ack, "duplicate", so the device stops resending; a
    refused one would have it resend an update that is in the sum. The race, by hand: the worker's
    read of the counted keys comes back as it was before the other count committed."""
    c = Cluster(model, postgres_dsn, devices=4)
    _opened(c)
    d = c.devices[0]
    delta = random_delta(c.shapes, np.random.default_rng(7))
    c.upload(d, delta)
    c.pump()
    assert d.acks() == [(True, "")]
    w = next(w for w in c.workers if w.shard == c.leader.assignment[d.id])
    w.tables.counted = lambda round_id, devices: {}  # read before the count above committed
    before = c.rows(SUMS)
    c.upload(d, delta)
    c.pump()
    assert d.acks() == [(True, ""), (True, "duplicate")]
    assert c.rows(SUMS) == before
