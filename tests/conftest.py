"""Fixtures shared across the test tree. The Mosquitto ones live in tests/mqtt_fixtures.py,
the PostgreSQL ones in tests/pg_server.py, the ejabberd cluster in tests/ejabberd_cluster.py."""

import logging

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


@pytest.fixture(autouse=True)
def _logging_as_it_was():
    """The root and "fedge" loggers' handlers and levels put back after each test. fedge's main()
    run in-process (many CLI tests) sets up logging as a command should (edge_runtime/logs.py:
    the root's handlers replaced by a StreamHandler on the sys.stderr of the moment): under capsys
    that stream is closed when the test ends, and every later record, from a server thread of
    another test, printed "--- Logging error --- ValueError: I/O operation on closed file". The
    saved lists hold pytest's own capture handlers too: its plugin attaches the same objects in
    every phase, so the list put back is what the teardown phase expects to remove."""
    saved = [(logger, logger.handlers[:], logger.level) for logger in (logging.getLogger(), logging.getLogger("fedge"))]
    yield
    for logger, handlers, level in saved:
        logger.handlers[:] = handlers
        logger.setLevel(level)


@pytest.fixture(autouse=True)
def _no_systemd_state_directory(monkeypatch):
    """A state store looks for rescued copies in, and saves them to, $STATE_DIRECTORY (what
    systemd sets for a unit's StateDirectory=, coordinator/state_file.py). A test run started
    with it set (from a unit's environment, or a shell that exported it) read that machine
    folder: one `state.db.rescued` there made 14 of test_state_file.py's 20 tests fail with
    StoreGone, and rescues were written into it. The tests that mean it set it themselves."""
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


def pytest_collection_modifyitems(config, items):
    """Mark tests by the servers they start, so `-m "not mosquitto"` or `-m "not postgres"` deselects them."""
    mqtt_fixtures.pytest_collection_modifyitems(config, items)
    for item in items:
        if set(getattr(item, "fixturenames", ())) & set(POSTGRES_FIXTURES):
            item.add_marker(pytest.mark.postgres)
    mark_ejabberd(items)
