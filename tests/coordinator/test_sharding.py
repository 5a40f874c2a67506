"""Sharded ingest over the in-memory broker and a real PostgreSQL: a leader (ShardedCoordinator),
two aggregator workers and hand-driven devices.

Oracle: the committed model equals, bit for bit, a reference that reads the counted updates
back from shard_updates, sums them per shard in acceptance order in float64 (a plain loop,
not sums.py), merges the shards in index order and applies the same FedAvg server step.
"""

from __future__ import annotations

import threading
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.coordinator.aggregate import WeightedMean
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.coordinator.sharding.config import ShardConflict, shard_for
from fedge.coordinator.sharding.sums import PartialSum, merge
from fedge.coordinator.sharding.worker import serve_shard
from fedge.coordinator.strategies import make_strategy
from fedge.coordinator.weights import update_weight
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import shard_update_topic, shard_updates_filter
from fedge.edge_runtime.kernel.transport.base import Message
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from tests.coordinator.fleet import EXACT, HYPER, NO_EVAL, ManualDevice, random_delta
from tests.coordinator.shard_reference import reference
from tests.pg_server import import_psycopg
from tests.tiny_model import build_tiny_model

psycopg = import_psycopg()
from fedge.coordinator.leadership import FencedOut, PostgresLease  # noqa: E402
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402
from fedge.coordinator.sharding.leader import ShardedCoordinator  # noqa: E402
from fedge.coordinator.sharding.lease import ShardLease  # noqa: E402
from fedge.coordinator.sharding.tables import Counted, ShardTables  # noqa: E402
from fedge.coordinator.sharding.worker import ShardWorker, shard_client_id  # noqa: E402

K = 2


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


# ---------------------------------------------------------------- config and pure sums


def test_sharding_is_off_by_default_and_refuses_what_it_cannot_run():
    assert CoordinatorConfig().shards == 0
    dsn = "postgresql://x@127.0.0.1/db"
    ok = dict(shards=2, state_dsn=dsn, aggregator="mean")
    assert CoordinatorConfig(**ok).shards == 2
    for change, reason in [({"state_dsn": ""}, "shards_postgres"), ({"strategy": "scaffold"}, "shards_scaffold"),
                           ({"privacy": PrivacyConfig(enabled=True, noise_multiplier=1.0, target_quantile=0.5),
                             "weighting": "equal"}, "shards_adaptive_clip")]:
        with pytest.raises(ShardConflict) as info:
            CoordinatorConfig(**{**ok, **change})
        assert info.value.reason == reason
        assert f"shards = 2 ({reason}): " in str(info.value)  # the README's name, in the line the user reads


def test_a_worker_needs_postgres_and_shards(model):
    from fedge.coordinator.service import ServiceConfig, coordinator_link
    from fedge.coordinator.sharding.serve import run_worker

    cfg = ServiceConfig(coordinator=CoordinatorConfig(artifacts_dir=str(model[0])))
    with pytest.raises(ConfigError, match="--role worker needs"):
        run_worker(cfg, threading.Event(), coordinator_link)


def test_partial_sums_are_the_streaming_means_arithmetic_and_survive_bytes():
    rng = np.random.default_rng(3)
    shapes = {"a": (3, 4), "b": (5,)}
    deltas = [random_delta(shapes, rng) for _ in range(9)]
    weights = [float(w) for w in rng.integers(1, 50, 9)]
    stream, parts = WeightedMean(), [PartialSum(), PartialSum()]
    for i, (d, w) in enumerate(zip(deltas, weights)):
        stream.add(d, w)
        parts[i % 2].add(d, w)
    one = PartialSum()
    for d, w in zip(deltas, weights):
        one.add(d, w)
    for k in shapes:
        assert np.array_equal(one.sums[k], stream.sums[k])  # bit for bit: the same operations
    back = [PartialSum.from_bytes(p.to_bytes(), shapes, p.weight, p.count) for p in parts]
    total = merge([PartialSum(), *back])  # an empty shard adds nothing
    assert total.count == 9 and total.weight == sum(weights)
    for k in shapes:
        assert np.array_equal(total.sums[k], back[0].sums[k] + back[1].sums[k])
        np.testing.assert_allclose(total.sums[k], stream.sums[k], rtol=1e-12)


# ---------------------------------------------------------------- leader + workers


class Cluster:
    """Leader, K workers and devices on one in-memory broker, stepped by hand."""

    def __init__(self, model, dsn, devices=20, keep_key_rounds=100, broker=None, **config):
        art, self.manifest, runtime = model
        self.dsn = dsn
        self.cfg = CoordinatorConfig(**{"clients_per_round": devices, "over_selection": 1.0, "hyper": HYPER,
                                        "compression": EXACT, "aggregator": "mean", "evaluation": NO_EVAL,
                                        "state_dsn": dsn, "shards": K, "round_deadline_s": 60.0, **config})
        # broker: anything with connect(client_id) -> Transport (a real Mosquitto in the red-team tests)
        self.broker, self.clock = broker or InMemoryBroker(), ManualClock()
        self.lease = PostgresLease(dsn)
        assert self.lease.try_acquire()
        self.store = PostgresStore(dsn, epoch=self.lease.epoch, keep_key_rounds=keep_key_rounds)
        self.strategy = make_strategy("fedavg", self.cfg.hyper)
        self.leader = ShardedCoordinator(self.broker.connect("coordinator"), self.strategy, self.manifest,
                                         runtime.initial("shared"), self.cfg, clock=self.clock, store=self.store)
        self.leader.poll_s = 0.0
        self.leader.start()
        self.shapes = self.leader.shapes
        self.workers = [self.worker(k) for k in range(K)]
        rng = np.random.default_rng(7)
        self.devices = [ManualDevice(self, f"dev{i:02d}", int(rng.integers(5, 60))) for i in range(devices)]
        self.pump()

    @property
    def coordinator(self):  # ManualDevice's fleet interface
        return self.leader

    def worker(self, shard: int) -> ShardWorker:
        lease = ShardLease(self.dsn, shard)
        assert lease.try_acquire()
        transport = self.broker.connect(shard_client_id(shard))
        transport.subscribe(shard_updates_filter(shard))
        w = ShardWorker(shard, lease.epoch, ShardTables(self.dsn), transport, self.cfg, self.manifest.model_id,
                        self.shapes)
        w.lease = lease
        return w

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            while self.leader.pump(0.0):
                moved = True
            for w in self.workers:  # all that waits, as one burst (one transaction): serve_shard's way
                burst = []
                while (msg := w.transport.receive(0.0)) is not None:
                    burst.append(msg)
                if burst:
                    w.handle_burst(burst)
                    moved = True

    def upload(self, device: ManualDevice, delta, update_id="u1", shard=None) -> None:
        task = device.task()
        update = device.update(delta, update_id, shard=task.shard)
        device.t.publish(shard_update_topic(task.shard if shard is None else shard, device.id), encode_message(update))

    def all_counted(self, seed: int) -> int:
        """Open a round, have every device upload a random delta and the workers count them; its id."""
        assert self.leader.begin_round()
        self.pump()
        rng = np.random.default_rng(seed)
        for d in self.devices:
            self.upload(d, random_delta(self.shapes, rng))
        self.pump()
        return self.leader.round.ctx.round_id

    def rows(self, sql: str, *args) -> list[tuple]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql, args).fetchall()


def _reference(cluster: Cluster, old_state, round_id: int):
    return reference(cluster.rows, K, round_id, old_state, cluster.strategy, len(cluster.devices))


def test_two_workers_count_every_update_once_and_the_leader_commits_their_merged_sums(model, postgres_dsn):
    c = Cluster(model, postgres_dsn)
    old = c.leader.state
    assert c.leader.begin_round()
    c.pump()
    tasks = {d.id: d.task() for d in c.devices}
    assert {t.shard for t in tasks.values()} == set(range(K))
    assert all(t.shard == shard_for(d, K) for d, t in tasks.items())
    rng = np.random.default_rng(11)
    for d in c.devices:
        c.upload(d, random_delta(c.shapes, rng))
    c.upload(c.devices[0], random_delta(c.shapes, rng), "u1")  # same key, new bytes: conflicting
    c.upload(c.devices[1], random_delta(c.shapes, rng), "u2")  # a second update of a device that reported
    c.pump()
    record = c.leader.tick()
    assert record is not None and record.committed, record
    want, counted = _reference(c, old, record.round_id)
    assert counted == 20 and record.reports == 20
    for k in want:
        assert np.array_equal(c.leader.state.params[k], want[k]), k
    assert sum(w.accepted for w in c.workers) == 20
    assert {w.shard: w.accepted for w in c.workers} == dict(Counter(shard_for(d.id, K) for d in c.devices))
    assert c.rows("SELECT count(*) FROM shard_updates") == [(20,)]
    assert [a for a in c.devices[0].acks() if not a[0]] == [(False, "conflicting_duplicate")]
    assert (False, "stale_round") in c.devices[1].acks()  # a second update of a device that already reported


def test_wrong_shard_is_refused_by_name_and_a_resend_is_a_duplicate(model, postgres_dsn):
    c = Cluster(model, postgres_dsn, devices=4)
    assert c.leader.begin_round()
    c.pump()
    rng = np.random.default_rng(5)
    d0, d1 = c.devices[0], c.devices[1]
    wrong = 1 - d0.task().shard
    c.upload(d0, random_delta(c.shapes, rng), shard=wrong)
    d1.send(encode_message(d1.update(random_delta(c.shapes, rng))))  # the plain topic: the leader refuses it
    c.pump()
    assert d0.acks() == [(False, "wrong_shard")] and d1.acks() == [(False, "wrong_shard")]
    assert c.leader.rejections["wrong_shard"] == 1
    delta = random_delta(c.shapes, rng)
    c.upload(d0, delta)
    c.upload(d0, delta)  # the broker or the device sent it twice
    c.pump()
    assert d0.acks()[1:] == [(True, ""), (True, "duplicate")]
    assert c.rows("SELECT count(*), sum(weight) FROM shard_updates") == [
        (1, update_weight(d0.n, c.cfg.max_examples))]


def test_a_worker_names_and_counts_a_claim_over_the_cap(model, postgres_dsn, caplog):
    """The capped claim is logged and counted by the shard's worker too (once only unsharded)."""
    c = Cluster(model, postgres_dsn, devices=4, max_examples=1)
    assert c.leader.begin_round()
    c.pump()
    d0 = c.devices[0]
    c.upload(d0, random_delta(c.shapes, np.random.default_rng(6)))
    c.pump()
    worker = next(w for w in c.workers if w.shard == d0.task().shard)
    assert d0.n > 1 and worker.metrics.registry.get_sample_value("fedge_claims_capped_total") == 1
    assert f"{d0.id} claims {d0.n} examples; weighted as max_examples = 1" in caplog.text


def test_a_shard_taken_over_fences_the_old_worker_and_loses_nothing(model, postgres_dsn):
    c = Cluster(model, postgres_dsn, devices=8)
    old = c.leader.state
    assert c.leader.begin_round()
    c.pump()
    rng = np.random.default_rng(9)
    deltas = {d.id: random_delta(c.shapes, rng) for d in c.devices}
    half = c.devices[:4]
    for d in half:
        c.upload(d, deltas[d.id])
    c.pump()
    # shard 0's worker "dies": its lease session ends, a standby takes the shard with a new epoch
    dead = c.workers[0]
    dead.lease.close()
    c.workers[0] = c.worker(0)
    assert c.workers[0].epoch == dead.epoch + 1
    with pytest.raises(FencedOut):  # the old process, woken up, can add nothing
        dead.tables.count(0, dead.epoch, 1, [Counted(("x", "y"), "d", 1.0, b"", deltas[half[0].id])], c.shapes, K)
    for d in c.devices:  # everyone (re)sends: the uplink resends until its Ack
        c.upload(d, deltas[d.id])
    c.pump()
    record = c.leader.tick()
    assert record.committed and record.reports == 8
    want, counted = _reference(c, old, record.round_id)
    assert counted == 8
    for k in want:
        assert np.array_equal(c.leader.state.params[k], want[k]), k


def test_the_leader_prunes_shard_rows_as_its_store_prunes_update_keys(model, postgres_dsn):
    c = Cluster(model, postgres_dsn, devices=4, keep_key_rounds=1)
    rng = np.random.default_rng(2)
    for round_id in (1, 2):
        assert c.leader.begin_round()
        c.pump()
        for d in c.devices:
            c.upload(d, random_delta(c.shapes, rng), f"u{round_id}")
        c.pump()
        assert c.leader.tick().committed
        for table in ("shard_updates", "shard_sums", "shard_rounds"):  # keep 1: only the round just closed
            assert c.rows(f"SELECT DISTINCT round_id FROM {table}") == [(round_id,)], table


def test_a_burst_that_raises_is_counted_and_the_worker_serves_the_next():
    """As the coordinator's loop: an exception from one burst (a bug, a write the database
    refuses) must not end the worker; a crash would hand the same message to every spare."""
    stop, handled, reasons = threading.Event(), [], []
    inbox = [Message("fedge/v1/shard/0/devices/a/update", b"first"), None,
             Message("fedge/v1/shard/0/devices/b/update", b"second")]

    def receive(timeout):
        if not inbox:
            stop.set()
            return None
        return inbox.pop(0)

    def handle_burst(burst):
        handled.append([m.payload for m in burst])
        if burst[0].payload == b"first":
            raise ValueError("a bug")

    worker = SimpleNamespace(shard=0, epoch=1, refresh=lambda: None, handle_burst=handle_burst,
                             transport=SimpleNamespace(subscribe=lambda *a, **k: None, receive=receive),
                             metrics=SimpleNamespace(rejected=reasons.append))
    serve_shard(worker, SimpleNamespace(check=lambda: None), stop, check_s=0.0)
    assert handled == [[b"first"], [b"second"]] and reasons == ["internal:ValueError"]


def test_the_round_record_counts_every_update_in_the_model_not_only_those_the_leader_polled(model, postgres_dsn):
    c = Cluster(model, postgres_dsn, min_reports=10)
    old = c.leader.state
    assert c.leader.begin_round()
    c.pump()
    rng = np.random.default_rng(5)
    for d in c.devices[:12]:
        c.upload(d, random_delta(c.shapes, rng))
    c.pump()
    assert c.leader.tick() is None  # polled: 12 of 20 replied, the round waits for the rest
    # What workers count between the leader's last poll and its seal is in the model but was never
    # a Replied event (in service the workers run concurrently): here, the leader polls no more.
    c.leader._next_poll = float("inf")
    for d in c.devices[12:15]:
        c.upload(d, random_delta(c.shapes, rng))
    c.pump()
    c.clock.advance(61.0)  # past the deadline: Aggregate seals what the workers counted
    record = c.leader.tick()
    assert record is not None and record.committed, record
    want, counted = _reference(c, old, record.round_id)
    assert counted == 15 and record.reports == 15
    for k in want:
        assert np.array_equal(c.leader.state.params[k], want[k]), k


def test_a_device_that_declined_is_not_counted_by_its_worker_as_on_one_machine(model, postgres_dsn):
    from fedge.edge_runtime.kernel.protocol import Decline

    c = Cluster(model, postgres_dsn)
    assert c.leader.begin_round()
    c.pump()
    dev = c.devices[0]
    task = dev.task()
    dev.send(encode_message(Decline(dev.id, task.round_id, task.task_id, "battery_low")))
    c.pump()
    assert c.leader.declines["battery_low"] == 1
    c.upload(dev, random_delta(c.shapes, np.random.default_rng(2)))
    c.pump()
    assert dev.acks() == [(False, "stale_round")]
    assert c.rows("SELECT count(*) FROM shard_updates WHERE device_id = %s", dev.id) == [(0,)]


def test_a_decline_after_the_device_s_update_was_counted_by_its_worker_is_refused(model, postgres_dsn):
    """The leader learns a worker's counts at its next poll (poll_s): a decline that came before
    it found the device still expected, and was counted as well as its update (the merged sum
    holds it): one answer twice, the decline single-machine admission refuses (stale_round)."""
    from fedge.edge_runtime.kernel.protocol import Decline

    c = Cluster(model, postgres_dsn, devices=4)
    assert c.leader.begin_round()
    c.pump()
    dev = c.devices[0]
    c.upload(dev, random_delta(c.shapes, np.random.default_rng(2)))
    c.pump()  # its worker counts it; the leader has not polled since
    assert c.rows("SELECT count(*) FROM shard_updates WHERE device_id = %s", dev.id) == [(1,)]
    task = dev.task()
    dev.send(encode_message(Decline(dev.id, task.round_id, task.task_id, "interrupted")))
    c.pump()
    assert dict(c.leader.rejections) == {"stale_round": 1} and not c.leader.declines
    assert dev.id in c.leader.round.machine.reported


def test_a_leader_with_fewer_shards_than_the_round_was_counted_on_still_reads_every_sum(model, postgres_dsn, caplog):
    """K is not stored: a leader restarted mid-round with shards = K - 1 read only the sums below
    it, and the acked updates counted on shard K - 1 were left out of a plain-mean round without
    a word (found by the async/shards review). Oracle: the updates the workers counted."""
    c = Cluster(model, postgres_dsn)
    round_id = c.all_counted(seed=13)
    counted = c.rows("SELECT count(*) FROM shard_updates WHERE round_id = %s", round_id)[0][0]
    assert counted == 20 and {w.shard for w in c.workers if w.accepted} == set(range(K))
    tables = ShardTables(postgres_dsn)
    try:
        fewer = tables.seal(round_id, K - 1, c.shapes)
        assert sum(p.count for p in fewer) == counted and len(fewer) == K
        assert "beyond this leader's shards" in caplog.text
        assert [p.count for p in fewer] == [p.count for p in tables.seal(round_id, K, c.shapes)]
    finally:
        tables.close()
