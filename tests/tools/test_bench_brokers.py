"""`fedge bench brokers`: both brokers measured in one run, every message delivered, JSON written."""

from __future__ import annotations

import json
import os

import pytest

from fedge.tools.bench.brokers import main, run
from fedge.tools.broker.ejabberd import find_ejabberd

pytestmark = [pytest.mark.slow]


def test_one_run_measures_mosquitto_and_the_ejabberd_cluster(mosquitto_binary, tmp_path):
    if find_ejabberd() is None and os.environ.get("FEDGE_REQUIRE_EJABBERD") == "1":
        pytest.fail("no ejabberd, and FEDGE_REQUIRE_EJABBERD=1")
    out = tmp_path / "brokers.json"
    result = run(devices=4, messages=10, kb=1, json_path=str(out))
    assert json.loads(out.read_text()) == result
    assert result["mosquitto"]["messages"] == 40 and result["mosquitto"]["messages_per_s"] > 0
    if find_ejabberd() is None:
        assert "skipped" in result["ejabberd_2_nodes"]
    else:
        assert result["ejabberd_2_nodes"]["messages"] == 40
        assert result["ejabberd_vs_mosquitto"] > 0


def test_a_load_past_the_brokers_queues_is_refused():
    with pytest.raises(SystemExit):
        main(["--devices", "100", "--messages", "100"])
