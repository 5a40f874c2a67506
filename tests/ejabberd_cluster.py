"""A two-node ejabberd MQTT cluster on loopback, for the scale-out tests.

    ejabberd_cluster      module-scoped: two nodes joined in one cluster (tools/broker/ejabberd.py),
                          each with its own config (the shipped hardware/ejabberd/ejabberd.yml with
                          its own MQTT port), spool and log folders; user "coordinator" registered.
                          A module's EJABBERD_SHARDS = K adds the devices' upload grants of K
                          shards, as `fedge provision ejabberd --shards K` writes them.
                          Tests that kill a node get their own module, so nothing else shares it.

Without ejabberd the tests skip, naming the package, unless FEDGE_REQUIRE_EJABBERD=1 (CI),
where they fail. Tests using the fixture get the `ejabberd` marker.
"""

from __future__ import annotations

import pytest

from fedge.tools.broker.ejabberd import INSTALL_HINT, EjabberdCluster, find_ejabberd
from tests.mqtt_fixtures import missing_tool

EJABBERD_FIXTURES = ("ejabberd_cluster",)


def _ejabberd_or_skip() -> tuple[str, str]:
    found = find_ejabberd()
    if found is None:
        missing_tool(f"no ejabberd (erl and /usr/lib/*/ejabberd-*); {INSTALL_HINT}", "FEDGE_REQUIRE_EJABBERD")
    return found


@pytest.fixture(scope="module")
def ejabberd_cluster(request, tmp_path_factory):
    erl, libs = _ejabberd_or_skip()
    shards = getattr(request.module, "EJABBERD_SHARDS", 0)  # a module's K: the devices' shard upload grants
    cluster = EjabberdCluster(erl, libs, tmp_path_factory.mktemp("ejabberd"), shards)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


def mark_ejabberd(items) -> None:
    """Mark every test that uses the cluster, so `-m "not ejabberd"` deselects it."""
    for item in items:
        if set(getattr(item, "fixturenames", ())) & set(EJABBERD_FIXTURES):
            item.add_marker(pytest.mark.ejabberd)
