"""`fedge bench mqtt` measures a round that really happened: every device's update accepted
and committed, with the params published once or inline. A round that does not commit makes
the benchmark fail instead of reporting a ratio (it once timed rounds that all devices declined)."""

from __future__ import annotations

import json

import pytest

from fedge.tools.bench import mqtt as bench

pytestmark = [pytest.mark.mosquitto, pytest.mark.slow]


@pytest.mark.parametrize("model_part_bytes", [0, 4096])
def test_the_measured_round_commits_every_update(mosquitto, tmp_path, model_part_bytes):
    out = tmp_path / "out.json"
    result = bench.run(6, 8, str(out), broker_url=mosquitto.url, timeout_s=60, model_part_bytes=model_part_bytes)
    assert json.loads(out.read_text()) == result
    assert (result["committed"], result["reports"], result["devices"]) == (True, 6, 6)
    assert result["bytes_up"] >= 6 * 8 * 1024
    assert result["fedge_round_seconds"] > 0 and result["raw_paho_seconds"] > 0
    assert result["raw_paho_round_trip_seconds"] > 0
    ratio = result["fedge_round_seconds"] / result["raw_paho_round_trip_seconds"]
    assert result["ratio_round_trip"] == pytest.approx(ratio, rel=1e-2)
    params_once = 8 * 1024
    if model_part_bytes:  # the model went out once, in three parts, beside six small tasks
        assert params_once < result["bytes_down"] < 2 * params_once
    else:
        assert result["bytes_down"] > 6 * params_once


def test_the_replay_devices_are_asked_for_no_evaluation():
    """The replay devices answer training tasks only: the commit's evaluation went to them and
    ended in an AttributeError traceback in every device process, on every run (exit 0)."""
    from fedge.edge_runtime.evaluation import answer_eval

    assert bench.bench_config(6, 8192, 60, 0).evaluation.every_rounds == 0
    assert not hasattr(bench.ReplayRuntime, "eligibility")  # what answer_eval asks first
    assert "eligibility" in answer_eval.__code__.co_names


def test_a_round_that_does_not_commit_is_not_reported(mosquitto, tmp_path, monkeypatch):
    # The parent writes the devices' manifest under another name: the devices (spawned
    # processes) lack the model, try to fetch it from a coordinator that serves none, and decline.
    monkeypatch.setattr(bench, "MANIFEST_FILE", "elsewhere.json")
    with pytest.raises(RuntimeError, match="did not commit"):
        bench.run(3, 4, str(tmp_path / "out.json"), broker_url=mosquitto.url, timeout_s=60)
    assert not (tmp_path / "out.json").exists()
