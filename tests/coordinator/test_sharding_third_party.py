"""Sharded ingest attacked through a real Mosquitto (open dev config: any client, any topic) by
raw paho clients fedge did not write: a leader, two aggregator workers and ten devices, four of
whom upload their own crafted Updates with paho instead of fedge's transport.

Tried: an update on the other shard's topic; on a shard no worker serves; the same update on
both shards; a message claiming the other shard on its own shard's topic, and on the other
shard's topic claiming that shard (the stored assignment refuses it); a device id that is not
its topic's; bytes that are no message; an Update of a device the round never selected; a new
update, and a counted one replayed, after the workers counted and the leader committed the round.
Expected: each refused by name (acked to the device, counted in the worker's metrics by reason),
nothing counted twice, and the round commits the plain example-weighted mean of the honest
updates (fleet.fedavg_oracle, from the bytes that crossed the wire).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import TrainTask, shard_update_topic
from tests.coordinator.fleet import assert_params, copy_params, fedavg_oracle, random_delta
from tests.coordinator.mqtt_attackers import SecuredConnector, exported_rejections, open_broker
from tests.coordinator.test_sharding import Cluster, K, model  # noqa: F401 - model: the module's fixture

pytestmark = pytest.mark.mosquitto


def mosquitto_connector(process) -> SecuredConnector:
    """connect(client_id) -> a connected MqttTransport, raw(client_id) -> a connected paho client,
    on the open dev broker (mqtt_attackers' connector, with no passwords)."""
    return SecuredConnector(open_broker(process))


def _pump_until(c: Cluster, done, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        c.pump()
        if done():
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _has_task(device) -> bool:
    device.receive()
    return any(isinstance(m, TrainTask) for m in device.inbox)


def _send(paho, topic: str, update) -> None:
    paho.publish(topic, encode_message(update), qos=1).wait_for_publish(10)


def _rejections(c: Cluster) -> dict[str, float]:
    out: dict[str, float] = {}
    for w in c.workers:
        for reason, n in exported_rejections(SimpleNamespace(metrics=w.metrics)).items():
            out[reason] = out.get(reason, 0) + n
    return out


@pytest.fixture
def cluster(model, postgres_dsn, mosquitto, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, "fedge.coordinator")
    broker = mosquitto_connector(mosquitto)
    c = Cluster(model, postgres_dsn, devices=10, broker=broker, min_reports=6)
    _pump_until(c, lambda: len(c.leader.registry) == 10, "check-ins")
    c.paho = broker.raw("third-party")
    c.caplog = caplog
    yield c
    broker.close()


def test_updates_on_the_wrong_missing_or_both_shards_are_refused_by_name_and_the_round_is_the_honest_mean(
        cluster):
    c = cluster
    old = copy_params(c.leader.state.params)
    assert c.leader.begin_round()
    _pump_until(c, lambda: all(_has_task(d) for d in c.devices), "tasks")
    honest, (a_other, a_missing, a_both, a_claim) = c.devices[:6], c.devices[6:]
    rng = np.random.default_rng(21)
    sent = []
    for d in honest:
        update = d.update(random_delta(c.shapes, rng), shard=d.task().shard)
        _send(c.paho, shard_update_topic(d.task().shard, d.id), update)
        sent.append(update)
    other = {d.id: 1 - d.task().shard for d in c.devices}
    # 1. the other shard's topic (the message names the other shard too: a consistent lie)
    _send(c.paho, shard_update_topic(other[a_other.id], a_other.id),
          a_other.update(random_delta(c.shapes, rng), shard=other[a_other.id]))
    # 2. a shard that does not exist: no worker subscribes, the broker drops it (the provisioned
    #    ACL grants only shard/k for k < K, so there it never leaves the device's link)
    _send(c.paho, shard_update_topic(7, a_missing.id), a_missing.update(random_delta(c.shapes, rng), shard=7))
    # 3. the same update on both shards: counted once, on its own shard
    both = a_both.update(random_delta(c.shapes, rng), shard=a_both.task().shard)
    _send(c.paho, shard_update_topic(0, a_both.id), both)
    _send(c.paho, shard_update_topic(1, a_both.id), both)
    # 4. its own shard's topic, but the message claims the other shard
    _send(c.paho, shard_update_topic(a_claim.task().shard, a_claim.id),
          a_claim.update(random_delta(c.shapes, rng), shard=other[a_claim.id]))
    # 5. an honest device's id on an attacker's topic
    _send(c.paho, shard_update_topic(a_claim.task().shard, a_claim.id),
          honest[0].update(random_delta(c.shapes, rng), update_id="forged", shard=a_claim.task().shard))
    # 6. bytes that are no message, and an Update of a device the round never selected, on shard topics
    c.paho.publish(shard_update_topic(0, "ghost"), b"\x00 not a frame", qos=1).wait_for_publish(10)
    _send(c.paho, shard_update_topic(1, "ghost"), dataclasses.replace(
        honest[0].update(random_delta(c.shapes, rng), update_id="ghost"), device_id="ghost", shard=1))
    _pump_until(c, lambda: len(a_other.acks()) == 1 and len(a_both.acks()) == 2 and len(a_claim.acks()) == 1
                and all(d.acks() for d in honest), "acks")
    sent.append(both)
    assert a_other.acks() == [(False, "wrong_shard")]
    assert sorted(a_both.acks()) == [(False, "wrong_shard"), (True, "")]
    assert a_claim.acks() == [(False, "wrong_shard")]
    assert a_missing.acks() == []
    assert all(d.acks() == [(True, "")] for d in honest)
    # ghost: not expected by the round, as the one-machine coordinator says it (admission.admit)
    assert _rejections(c) == {"wrong_shard": 3, "unexpected_message": 1, "malformed": 1, "stale_round": 1}
    for reason in ("wrong_shard", "unexpected_message", "malformed", "stale_round"):  # and each in a log line
        assert any("rejected message from" in r.getMessage() and f": {reason} (" in r.getMessage()
                   for r in c.caplog.records), reason
    assert c.rows("SELECT count(*) FROM shard_updates") == [(7,)]

    c.clock.advance(c.cfg.round_deadline_s + 1)
    record = c.leader.tick()
    assert record is not None and record.committed, record
    assert record.reports == 7
    assert_params(c.leader.state.params, fedavg_oracle(old, sent))
    committed = copy_params(c.leader.state.params)

    # 7. after the workers counted and the leader committed: the round's updates are stale
    late = a_other.update(random_delta(c.shapes, rng), update_id="late", shard=a_other.task().shard)
    _send(c.paho, shard_update_topic(a_other.task().shard, a_other.id), late)
    _send(c.paho, shard_update_topic(honest[1].task().shard, honest[1].id), sent[1])  # a replay of a counted one
    _pump_until(c, lambda: len(a_other.acks()) == 2 and len(honest[1].acks()) == 2, "late acks")
    assert a_other.acks()[1] == (False, "stale_round")
    assert honest[1].acks()[1][1] in ("stale_round", "duplicate")
    assert c.rows("SELECT count(*) FROM shard_updates") == [(7,)]
    assert_params(c.leader.state.params, committed)
