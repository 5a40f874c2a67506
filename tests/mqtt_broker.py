"""A Mosquitto for tests: started on a free loopback port, stopped by pid.

Tests skip when no mosquitto binary is installed, unless FEDGE_REQUIRE_MOSQUITTO=1 (set by
.ci/run), where a missing broker is a failure: CI must run them.
"""

from __future__ import annotations

import os

import pytest

from tools.broker import BrokerConfig, MosquittoProcess, find_mosquitto


def require_broker_binary() -> None:
    if find_mosquitto() is None:
        message = "mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)"
        if os.environ.get("FEDGE_REQUIRE_MOSQUITTO") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def open_broker(tmp_path_factory):
    """An open (anonymous, no ACL) loopback broker shared by a test module."""
    require_broker_binary()
    with MosquittoProcess(BrokerConfig(persistence=False), workdir=tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker
