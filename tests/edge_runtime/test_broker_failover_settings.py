"""[broker] fallback_urls: the nodes a client tries in turn, validated like url."""

from __future__ import annotations

import pytest

from fedge.coordinator.retain_fanout import RetainFanout, cluster_transport
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.paho_client import endpoint_url
from fedge.edge_runtime.kernel.transport.settings import MqttSettings


def test_endpoints_are_url_then_each_fallback_round_robin():
    s = MqttSettings(url="mqtt://a:1883", fallback_urls=("mqtt://b:1884", "c"))
    assert s.endpoints() == (("a", 1883, False), ("b", 1884, False), ("c", 1883, False))
    assert [endpoint_url(s, i) for i in range(4)] == ["mqtt://a:1883", "mqtt://b:1884", "mqtt://c:1883",
                                                      "mqtt://a:1883"]


@pytest.mark.parametrize("fallback", ["mqtts://b:8883", "http://b:1", "mqtt://b:99999", "mqtt://:1883"])
def test_a_fallback_must_be_a_node_reached_like_url(fallback):
    with pytest.raises(ConfigError, match=fallback):
        MqttSettings(url="mqtt://a:1883", fallback_urls=(fallback,))


def test_the_coordinator_mirrors_retained_messages_only_for_a_cluster():
    single = cluster_transport("coordinator", MqttSettings(url="mqtt://127.0.0.1:1"))
    cluster = cluster_transport("coordinator", MqttSettings(url="mqtt://127.0.0.1:1",
                                                            fallback_urls=("mqtt://127.0.0.1:2",)))
    try:
        assert isinstance(single, MqttTransport)
        assert isinstance(cluster, RetainFanout) and [m.client_id for m in cluster.mirrors] == ["coordinator-retain-1"]
        assert cluster.mirrors[0].settings.url == "mqtt://127.0.0.1:2" and cluster.mirrors[0].settings.clean_start
    finally:
        single.close()
        cluster.close()
