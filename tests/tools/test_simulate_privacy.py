"""`fedge simulate` with [coordinator.privacy] on: run.json records ε after every round, matching
dp-accounting called directly, and the run ends at the round the budget refuses."""

from __future__ import annotations

import json

import pytest

from fedge.tools.cli import main
from tests.coordinator.test_dp import _direct

# Z = 3: 1.5 in dp-accounting's replace-one terms (a swapped device moves the clipped sum by 2S)
DEVICES, PER_ROUND, Z, TARGET, DELTA = 20, 4, 3.0, 3.0, 1e-5


def test_simulate_with_privacy_records_epsilon_per_round_and_stops_at_the_budget(tmp_path):
    refused = 1
    while _direct("fixed", DEVICES, PER_ROUND, Z, refused, DELTA) <= TARGET:
        refused += 1
    config = tmp_path / "private.toml"
    config.write_text(f"""
clients_per_round = {PER_ROUND}
over_selection = 1.0
aggregator = "mean"
weighting = "equal"
[privacy]
enabled = true
noise_multiplier = {Z}
clip_norm = 0.5
target_epsilon = {TARGET}
delta = {DELTA}
on_exhausted = "wait"
""")
    out = tmp_path / "run.json"
    assert main(["simulate", "--dataset", "digits", "--devices", str(DEVICES), "--rounds", str(refused + 3),
                 "--config", str(config), "--quiet", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["round"] for r in doc["rounds"]] == list(range(1, refused))  # then the budget ended the run
    for r in doc["rounds"]:
        assert r["committed"] and r["selected"] == PER_ROUND
        assert r["epsilon"] == pytest.approx(_direct("fixed", DEVICES, PER_ROUND, Z, r["round"], DELTA), abs=1e-6)
    p = doc["summary"]["privacy"]
    assert p["rounds_charged"] == refused - 1 and f"after {refused} rounds" in p["refused"]
    assert doc["config"]["coordinator"]["compression"]["clip_norm"] == 0.5  # the devices clip to S
    assert (tmp_path / "run.png").stat().st_size > 1000


def test_simulate_without_privacy_has_null_epsilon(tmp_path):
    out = tmp_path / "run.json"
    assert main(["simulate", "--dataset", "digits", "--devices", "4", "--rounds", "1", "--quiet",
                 "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["rounds"][0]["epsilon"] is None and doc["summary"]["privacy"] is None


@pytest.mark.mosquitto
def test_the_mqtt_fleet_runs_dp_and_stops_at_the_same_round(mosquitto_binary, tmp_path):
    from dataclasses import replace

    from fedge.coordinator.dp.config import PrivacyConfig
    from fedge.tools.broker import BrokerConfig, MosquittoProcess
    from fedge.tools.simulate.config import SIM_COORDINATOR, sim_config
    from fedge.tools.simulate.fleet import run_simulation

    refused = 1
    while _direct("fixed", DEVICES, PER_ROUND, Z, refused, DELTA) <= TARGET:
        refused += 1
    coordinator = replace(SIM_COORDINATOR, clients_per_round=PER_ROUND, over_selection=1.0, aggregator="mean",
                          weighting="equal", privacy=PrivacyConfig(enabled=True, noise_multiplier=Z, clip_norm=0.5,
                                                                   target_epsilon=TARGET, delta=DELTA))
    with MosquittoProcess(BrokerConfig(persistence=False), workdir=tmp_path / "broker",
                          binary=mosquitto_binary) as broker:
        result = run_simulation(sim_config(dataset="digits", devices=DEVICES, rounds=refused + 2, epochs=1,
                                           coordinator=coordinator, out_dir=str(tmp_path), transport="mqtt",
                                           broker_url=broker.url, round_deadline_s=60))
    assert [r["round"] for r in result.rounds] == list(range(1, refused))
    assert result.rounds[-1]["epsilon"] == pytest.approx(_direct("fixed", DEVICES, PER_ROUND, Z, refused - 1, DELTA),
                                                         abs=1e-6)
    assert result.summary["privacy"]["refused"]


@pytest.mark.filterwarnings("error::UserWarning")  # matplotlib once warned of a legend with nothing in it
def test_simulate_runs_an_empty_poisson_draw_as_a_noise_only_round(tmp_path):
    """The in-memory fleet read the open round's machine after begin_round; a noise-only round
    (coordinator/noise_round.py) has none. Its row: committed, nobody selected, ε of one
    PoissonSampledDpEvent(1/3) by dp-accounting directly."""
    from fedge.coordinator.sampling import poisson_sample
    ids = [f"dev-{k:03d}" for k in range(3)]
    seed = next(s for s in range(1000) if not poisson_sample(ids, 1 / 3, s, 1))
    config = tmp_path / "poisson.toml"
    config.write_text(f"""
clients_per_round = 1
over_selection = 1.0
aggregator = "mean"
weighting = "equal"
[privacy]
enabled = true
sampling = "poisson"
noise_multiplier = {Z}
clip_norm = 0.5
target_epsilon = 50.0
delta = {DELTA}
""")
    out = tmp_path / "run.json"
    assert main(["simulate", "--dataset", "digits", "--devices", "3", "--rounds", "1", "--seed", str(seed),
                 "--config", str(config), "--quiet", "--json", str(out)]) == 0
    [row] = json.loads(out.read_text())["rounds"]
    assert row["committed"] and row["selected"] == 0
    assert row["epsilon"] == pytest.approx(_direct("poisson", 3, 1, Z, 1, DELTA), abs=1e-6)
