"""A shard's worker and a retained update: a device may publish its update with retain set on
its shard topic, and the broker replays it whenever a worker subscribes (a restart, a spare
taking the shard over). The live copy is counted; the replay is refused by name, not answered."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import shard_update_topic, shard_updates_filter
from tests.coordinator.fleet import random_delta
from tests.coordinator.test_sharding import Cluster
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_worker_refuses_the_replay_of_a_retained_update(model, postgres_dsn, caplog):
    c = Cluster(model, postgres_dsn, devices=2)
    assert c.leader.begin_round()
    c.pump()
    device = c.devices[0]
    shard = device.task().shard
    update = device.update(random_delta(c.shapes, np.random.default_rng(4)), shard=shard)
    device.t.publish(shard_update_topic(shard, device.id), encode_message(update), retain=True)
    c.pump()
    assert device.acks() == [(True, "")]  # the live copy

    spare = c.broker.connect("spare")  # subscribes as a restarted or standby worker would
    spare.subscribe(shard_updates_filter(shard))
    replay = spare.receive(0.0)
    assert replay is not None and replay.retain
    worker = c.workers[shard]
    worker.handle_burst([replay])
    c.pump()
    assert worker.metrics.registry.get_sample_value("fedge_rejections_total", {"reason": "retained"}) == 1
    assert f"rejected message from {device.id}: retained" in caplog.text
    assert device.acks() == [(True, "")]  # no second answer
    assert c.rows("SELECT count(*) FROM shard_updates") == [(1,)]
