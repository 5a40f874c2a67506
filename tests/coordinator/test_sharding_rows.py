"""A sharded fleet's shard tables read back from a PostgreSQL someone else changed: a worker's
open round, the partial sums a leader seals, the counted updates a robust round replays and a
DP round's plan stop with StoreCorrupt naming the DSN, table, column and row
(coordinator/sharding/rows.py). They used to surface as a JSONDecodeError in a worker's refresh,
a ValueError from np.frombuffer, or not at all: a NaN or negative weight, a negative count or a
NaN sum merged into the model the leader commits."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
from tests.coordinator.fleet import random_delta
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

psycopg = import_psycopg()
from fedge.coordinator.sharding.privacy import round_clip  # noqa: E402
from fedge.coordinator.sharding.replay import counted_updates  # noqa: E402
from fedge.coordinator.sharding.tables import ShardTables  # noqa: E402
from tests.coordinator.test_sharding import Cluster, K  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _counted(model, dsn) -> tuple[Cluster, int]:
    """A cluster whose open round has every device's update counted on its shard."""
    c = Cluster(model, dsn, devices=4)
    return c, c.all_counted(seed=3)


def _edit(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute(sql).rowcount >= 1


FIRST_SUM = "shard = (SELECT min(shard) FROM shard_sums)"
NAN_BYTES = "'\\x000000000000f87f'::bytea"  # float64 NaN, little-endian
SUMS = [  # (SET ..., the column named, what the error says)
    ("weight = 'NaN'", "weight", "not a finite number"),
    ("weight = -2", "weight", "a weight > 0 exactly when the count"),
    ("weight = 0", "weight", "a weight > 0 exactly when the count"),
    ("count = -1", "count", "not an integer >= 0"),
    ("data = substring(data from 1 for 8)", "data", "'8 bytes'"),
    (f"data = overlay(data placing {NAN_BYTES} from 1 for 8)", "data", "not finite sums"),
]


@pytest.mark.parametrize("change, column, said", SUMS, ids=[s[0][:30] for s in SUMS])
def test_a_partial_sum_fedge_never_wrote_stops_the_seal_by_name(model, postgres_dsn, change, column, said):
    c, round_id = _counted(model, postgres_dsn)
    tables = ShardTables(postgres_dsn)
    try:
        sealed = tables.seal(round_id, K, c.shapes)  # the oracle: the sums as the workers wrote them
        assert sum(p.count for p in sealed) == 4
        _edit(postgres_dsn, f"UPDATE shard_sums SET {change} WHERE round_id = {round_id} AND {FIRST_SUM}")
        with pytest.raises(StoreCorrupt, match=f"shard_sums\\.{column} holds .*\\(round {round_id}, shard \\d\\)") \
                as caught:
            tables.seal(round_id, K, c.shapes)
        assert said in str(caught.value)
    finally:
        tables.close()


UPDATES = [
    ("weight = 'NaN'", "weight", "not a finite number"),
    ("weight = 0", "weight", "not a weight > 0"),
    ("seq = -1", "seq", "not an integer >= 0"),
]


@pytest.mark.parametrize("change, column, said", UPDATES, ids=[u[0] for u in UPDATES])
def test_a_counted_update_fedge_never_wrote_stops_the_replay_by_name(model, postgres_dsn, change, column, said):
    c, round_id = _counted(model, postgres_dsn)
    tables = ShardTables(postgres_dsn)
    try:
        assert len(counted_updates(tables, round_id)) == 4  # the oracle: the rows as the workers wrote them
        _edit(postgres_dsn, f"UPDATE shard_updates SET {change} WHERE round_id = {round_id} AND device_id = "
                            f"'{c.devices[0].id}'")
        with pytest.raises(StoreCorrupt, match=f"shard_updates\\.{column} holds .*\\(round {round_id}") as caught:
            counted_updates(tables, round_id)
        assert said in str(caught.value)
    finally:
        tables.close()


@pytest.mark.parametrize("tasks, said", [("'not json'", "not a JSON object of task ids"), ("'[]'", "not a JSON object"),
                                         ("'{\"dev00\": 3}'", "not a JSON object of task ids")])
def test_a_worker_names_an_open_round_whose_tasks_are_no_tasks(model, postgres_dsn, tasks, said):
    c, round_id = _counted(model, postgres_dsn)
    worker = c.workers[0]
    worker.ctx = None
    worker.refresh()  # the oracle: the round as the leader wrote it
    assert worker.ctx.round_id == round_id and set(worker.ctx.tasks) == {d.id for d in c.devices}
    _edit(postgres_dsn, f"UPDATE rounds SET tasks = {tasks} WHERE status = 'open'")
    worker.ctx = None
    with pytest.raises(StoreCorrupt, match=f"rounds\\.tasks holds .* \\(open round {round_id}\\)") as caught:
        worker.refresh()
    assert said in str(caught.value)


@pytest.mark.parametrize("plan, said", [("'{not json'", "not a JSON dp RoundPlan or NULL"),
                                        ("'{\"cohort\": 2}'", "not a dp RoundPlan (")])
def test_a_worker_names_a_round_plan_that_is_no_plan(model, postgres_dsn, plan, said):
    c, round_id = _counted(model, postgres_dsn)
    tables = ShardTables(postgres_dsn)
    try:
        assert round_clip(tables, round_id) is None  # the oracle: a round without privacy
        _edit(postgres_dsn, f"UPDATE rounds SET privacy = {plan} WHERE round_id = {round_id}")
        with pytest.raises(StoreCorrupt, match=f"rounds\\.privacy holds .* \\(round {round_id}\\)") as caught:
            round_clip(tables, round_id)
        assert said in str(caught.value)
    finally:
        tables.close()


def test_a_worker_does_not_count_onto_a_partial_sum_fedge_never_wrote(model, postgres_dsn):
    """The worker's count reads its shard's sum to add to it: a NaN weight there was carried on."""
    c = Cluster(model, postgres_dsn, devices=4)
    assert c.leader.begin_round()
    c.pump()
    rng = np.random.default_rng(4)
    first, *rest = c.devices
    shard = first.task().shard
    late = next(d for d in rest if d.task().shard == shard)
    c.upload(first, random_delta(c.shapes, rng))
    c.pump()  # the oracle: counted, its shard's sum written
    assert first.acks() == [(True, "")]
    _edit(postgres_dsn, f"UPDATE shard_sums SET weight = 'NaN' WHERE shard = {shard}")
    c.upload(late, random_delta(c.shapes, rng))
    with pytest.raises(StoreCorrupt, match=f"shard_sums\\.weight holds nan \\(round \\d+, shard {shard}\\)"):
        c.pump()  # serve_shard logs it and leaves the burst unacked; by hand, it raises
