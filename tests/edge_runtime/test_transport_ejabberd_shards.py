"""A sharded fleet's upload grants on a real ejabberd cluster (tests/ejabberd_cluster.py, its
config as `fedge provision ejabberd --shards 2` writes it): a device uploads to the two shards'
topics under its own name, and may leave nothing on a made-up shard's. The shipped rules once
granted fedge/v1/shard/+/devices/%u/update, and a device could park retained messages on any
number of made-up shard topics. Its own module: its cluster has shard grants the others' lack."""

from __future__ import annotations

import pytest

from fedge.edge_runtime.kernel.errors import PublishRefused
from fedge.edge_runtime.kernel.protocol import shard_update_topic
from tests.edge_runtime.test_transport_ejabberd import _drain, links  # noqa: F401 (a fixture)

EJABBERD_SHARDS = 2


def test_a_device_uploads_to_the_k_shards_and_parks_nothing_on_a_made_up_one(ejabberd_cluster, links):  # noqa: F811
    cluster = ejabberd_cluster
    cluster.register("shard-a")
    coordinator = links("coordinator", cluster.settings("coordinator", node=0))
    coordinator.subscribe("fedge/v1/shard/#")
    device = links("shard-a", cluster.settings("shard-a", node=0))
    for shard in range(EJABBERD_SHARDS):
        device.publish(shard_update_topic(shard, "shard-a"), b"up")
        assert device.flush(5)
    got = _drain(coordinator, 1.0, want=2)  # then 1 s more: each once
    assert sorted(m.topic for m in got) == [shard_update_topic(k, "shard-a") for k in (0, 1)]
    for made_up in ("2", "junk"):
        device.publish(f"fedge/v1/shard/{made_up}/devices/shard-a/update", b"x" * 1000, retain=True)
        # ejabberd answers 0x90 (paho: "Topic name invalid") for a publish its rules refuse
        with pytest.raises(PublishRefused, match="Topic name invalid"):
            device.flush(5)
    late = links("coordinator-late", cluster.settings("coordinator", node=0))
    late.subscribe("fedge/v1/shard/#")
    assert _drain(late, 1.0) == []  # nothing retained came with the subscription
    with pytest.raises(PublishRefused):  # another device's name, on a granted shard
        device.publish(shard_update_topic(0, "shard-b"), b"forged")
        device.flush(5)
