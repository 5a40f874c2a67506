"""Fixtures shared across the test tree. The Mosquitto ones live in tests/mqtt_fixtures.py."""

from tests.mqtt_fixtures import (  # noqa: F401  (pytest finds fixtures and hooks by name here)
    mosquitto,
    mosquitto_binary,
    mosquitto_factory,
    mosquitto_mtls,
    mosquitto_secured,
    mtls_material,
    pytest_collection_modifyitems,
)
