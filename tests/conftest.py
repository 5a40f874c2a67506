"""Fixtures shared across the test tree. The Mosquitto ones live in tests/mqtt_fixtures.py,
the ejabberd cluster in tests/ejabberd_cluster.py."""

from tests.ejabberd_cluster import ejabberd_cluster, mark_ejabberd  # noqa: F401
from tests.mqtt_fixtures import (  # noqa: F401  (pytest finds fixtures and hooks by name here)
    mosquitto,
    mosquitto_binary,
    mosquitto_factory,
    mosquitto_mtls,
    mosquitto_secured,
    mtls_material,
)
from tests.mqtt_fixtures import pytest_collection_modifyitems as mark_mosquitto


def pytest_collection_modifyitems(config, items):
    mark_mosquitto(config, items)
    mark_ejabberd(items)
