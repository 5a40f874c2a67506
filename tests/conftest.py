"""Fixtures shared across the test tree. The Mosquitto ones live in tests/mqtt_fixtures.py,
the PostgreSQL ones in tests/pg_server.py, the ejabberd cluster in tests/ejabberd_cluster.py."""

import pytest

from tests import mqtt_fixtures
from tests.ejabberd_cluster import ejabberd_cluster, mark_ejabberd  # noqa: F401
from tests.mqtt_fixtures import (  # noqa: F401  (pytest finds fixtures and hooks by name here)
    mosquitto,
    mosquitto_binary,
    mosquitto_factory,
    mosquitto_mtls,
    mosquitto_secured,
    mtls_material,
)
from tests.pg_server import POSTGRES_FIXTURES, postgres_dsn, postgres_server  # noqa: F401


def pytest_collection_modifyitems(config, items):
    """Mark tests by the servers they start, so `-m "not mosquitto"` or `-m "not postgres"` deselects them."""
    mqtt_fixtures.pytest_collection_modifyitems(config, items)
    for item in items:
        if set(getattr(item, "fixturenames", ())) & set(POSTGRES_FIXTURES):
            item.add_marker(pytest.mark.postgres)
    mark_ejabberd(items)
