"""A sharded leader restarted with [coordinator.privacy] turned on while a round it opened with
privacy off is open (restart.abandon_unplanned, as test_dp_turned_on_restart.py on one machine).

The round's updates are its workers' rows (shard_updates), not the leader's store: the count the
record and the log give is what the workers counted, read after sealing the round so no count in
flight is missed and none lands after; the rows (payloads, partial sums) go at the abandon, not
keep_key_rounds rounds later at prune. The round needs none of its updates in reach, so a change
of ingest path (sharding on or off) at the same restart abandons it too, instead of refusing to
start (check_ingest) with advice that released it without privacy. Leader, workers and devices
as in test_sharding.py (in-memory broker, real PostgreSQL); oracles: the tables read back by a
second connection, and shard_reference.dp_reference for the private round after it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.restart import PRIVACY_TURNED_ON
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import make_strategy
from tests.coordinator.fleet import random_delta
from tests.coordinator.shard_reference import dp_reference
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

psycopg = import_psycopg()
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402
from fedge.coordinator.sharding.leader import ShardedCoordinator  # noqa: E402
from tests.coordinator.test_sharding import Cluster, K  # noqa: E402
from tests.coordinator.test_sharding_restart_config import unsharded_round_with_one_update  # noqa: E402
from tests.coordinator.test_sharding_robust_dp import DP, _privacy  # noqa: E402

SHARD_TABLES = ("shard_updates", "shard_sums")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _restart(c: Cluster, model, cls, **change):
    """The leader's process again on the same database with privacy on (no fencing epoch)."""
    _, manifest, runtime = model
    cfg = replace(c.cfg, privacy=_privacy(), **change)
    return cls(c.broker.connect("coordinator"), make_strategy("fedavg", cfg.hyper), manifest,
               runtime.initial("shared"), cfg, clock=c.clock, store=PostgresStore(c.dsn))


def _rows_of(c: Cluster, round_id: int) -> dict[str, int]:
    return {t: c.rows(f"SELECT count(*) FROM {t} WHERE round_id = %s", round_id)[0][0] for t in SHARD_TABLES}


def _counted_without_privacy(model, dsn, uploads: int) -> tuple[Cluster, int]:
    c = Cluster(model, dsn, devices=6, **DP)
    assert c.leader.begin_round() and c.leader.round.privacy is None
    c.pump()
    rng = np.random.default_rng(4)
    for d in c.devices[:uploads]:
        c.upload(d, random_delta(c.shapes, rng))
    c.pump()
    return c, c.leader.round.ctx.round_id


def _abandoned(c: Cluster, round_id: int, counted: int, leader, caplog) -> None:
    """What the restart left: the round abandoned by name with the workers' count, its shard rows
    gone, nothing released or charged, the log line, the metric."""
    assert leader.round is None and leader.next_round_id == round_id + 1 and leader.state.version == 0
    assert c.rows("SELECT status FROM rounds WHERE round_id = %s", round_id) == [("abandoned",)]
    (record,) = [r for r in leader.store.round_records() if r["round_id"] == round_id]
    assert (record["committed"], record["why"], record["reports"]) == (False, PRIVACY_TURNED_ON, counted)
    assert [r.message for r in caplog.records if PRIVACY_TURNED_ON in r.message] == [
        f"{leader.store.path}: round {round_id} was {PRIVACY_TURNED_ON}; its {counted} stored update(s) dropped "
        "unread, none released; the next opens under the privacy plan"]
    assert _rows_of(c, round_id) == {t: 0 for t in SHARD_TABLES}
    assert c.rows("SELECT version, round_id FROM models ORDER BY version") == [(0, None)]
    assert c.rows("SELECT count(*) FROM privacy_ledger") == [(0,)]
    registry = leader.metrics.registry
    assert registry.get_sample_value("fedge_rounds_total", {"outcome": "abandoned"}) == 1


def test_a_sharded_round_opened_with_privacy_off_is_abandoned_with_its_workers_rows(model, postgres_dsn, caplog):
    c, round_id = _counted_without_privacy(model, postgres_dsn, uploads=3)
    before = _rows_of(c, round_id)
    assert before["shard_updates"] == 3 and before["shard_sums"] >= 1
    old = c.leader.state

    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        c.leader = _restart(c, model, ShardedCoordinator)
    c.leader.poll_s = 0.0
    c.leader.start()
    _abandoned(c, round_id, 3, c.leader, caplog)
    assert c.rows("SELECT sealed FROM shard_rounds WHERE round_id = %s", round_id) == [(True,)]

    # a late upload to the abandoned round is counted nowhere
    late = c.devices[3]
    c.upload(late, random_delta(c.shapes, np.random.default_rng(9)))
    c.pump()
    assert _rows_of(c, round_id) == {t: 0 for t in SHARD_TABLES}

    # the next round is planned, its every update clipped, noised once, and it alone is charged
    assert c.leader.begin_round() and c.leader.round.ctx.round_id == round_id + 1
    assert c.leader.round.privacy is not None
    c.pump()
    rng = np.random.default_rng(5)
    for d in c.devices:
        c.upload(d, random_delta(c.shapes, rng), "private")
    c.pump()
    plan = json.loads(c.rows("SELECT privacy FROM rounds WHERE round_id = %s", round_id + 1)[0][0])
    record = c.leader.tick()
    assert record is not None and record.committed and record.reports == len(c.devices), record
    want, _, counted = dp_reference(c.rows, K, round_id + 1, old, c.strategy, len(c.devices), plan, c.cfg.seed)
    assert counted == len(c.devices)
    for k in want:
        assert np.array_equal(c.leader.state.params[k], want[k]), k
    assert c.rows("SELECT version, round_id FROM models ORDER BY version") == [(0, None), (1, round_id + 1)]
    assert c.rows("SELECT round_id FROM privacy_ledger") == [(round_id + 1,)]


def test_a_sharded_round_is_abandoned_not_refused_by_a_coordinator_turning_privacy_on_and_sharding_off(
        model, postgres_dsn, caplog):
    """check_ingest refused this start (the updates are in the workers' tables, out of a
    shards = 0 coordinator's reach) and told the operator to finish the round with its shards:
    with privacy off, one more non-private model. Unread, the round needs none of them."""
    c, round_id = _counted_without_privacy(model, postgres_dsn, uploads=2)
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        plain = _restart(c, model, Coordinator, shards=0)
    _abandoned(c, round_id, 2, plain, caplog)
    assert plain.begin_round() and plain.round.privacy is not None


def test_a_round_opened_without_shards_is_abandoned_not_refused_by_a_sharded_leader_turning_privacy_on(
        model, postgres_dsn, tmp_path, caplog):
    """The other way: its accepted update is the store's row, whose payload the close deletes."""
    fleet = unsharded_round_with_one_update(model, tmp_path, postgres_dsn, **DP)
    round_id = fleet.coordinator.round.ctx.round_id
    c = Cluster.__new__(Cluster)  # only its rows() and the restart's inputs
    c.dsn, c.broker, c.clock, c.cfg = postgres_dsn, fleet.broker, fleet.clock, replace(fleet.coordinator.config,
                                                                                       shards=K)
    assert c.rows("SELECT count(*) FROM updates WHERE round_id = %s AND payload IS NOT NULL", round_id) == [(1,)]
    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        leader = _restart(c, model, ShardedCoordinator)
    _abandoned(c, round_id, 1, leader, caplog)
    assert c.rows("SELECT count(*) FROM updates WHERE round_id = %s AND payload IS NOT NULL", round_id) == [(0,)]


def test_a_count_in_flight_at_the_restart_is_in_the_record_and_dropped_with_the_rest(model, postgres_dsn, caplog):
    """A worker's count that began before the restart and commits during it: read without the
    seal, the record said 2 and the third row (its payload with it) stayed after the abandon.
    The worker is a second connection stopped where tables.count holds the shard_rounds row
    FOR SHARE with its key inserted; it commits once the restart waits on that row."""
    c, round_id = _counted_without_privacy(model, postgres_dsn, uploads=2)
    late = c.devices[-1].id
    worker = psycopg.connect(postgres_dsn)  # not autocommit: one open transaction
    worker.execute("SELECT sealed FROM shard_rounds WHERE round_id = %s FOR SHARE", (round_id,))
    worker.execute("INSERT INTO shard_updates (round_id, device_id, update_id, shard, seq, digest, weight, payload) "
                   "VALUES (%s, %s, 'u1', 0, 99, 'x', 1.0, %s)", (round_id, late, b"payload"))
    restarted, failed = [], []

    def restart():
        try:
            restarted.append(_restart(c, model, ShardedCoordinator))
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            failed.append(exc)

    with caplog.at_level(logging.WARNING, logger="fedge.coordinator"):
        thread = threading.Thread(target=restart)
        thread.start()
        waiting = 0
        while thread.is_alive() and not waiting:  # until the restart waits on the worker's row lock
            waiting = c.rows("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND "
                             "query LIKE %s", "%shard_rounds%")[0][0]
            time.sleep(0.01)  # a poll, not a timing: the lock wait is the signal
        worker.commit()
        worker.close()
        thread.join()
    assert not failed and waiting, "the restart read the round's rows without waiting for the count in flight"
    _abandoned(c, round_id, 3, restarted[0], caplog)
