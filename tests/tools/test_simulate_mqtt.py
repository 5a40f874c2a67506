"""The simulator over a real Mosquitto: same results as in-memory, and rounds that survive
devices vanishing mid-round (or are abandoned cleanly when too few are left)."""

from __future__ import annotations

import threading

import pytest

from tools.broker import BrokerConfig, MosquittoProcess
from tools.simulate.config import SimConfig
from tools.simulate.fleet import run_simulation
from tools.simulate.mqtt_fleet import SimDeviceAgent
from tools.simulate.stragglers import choose_stragglers

pytestmark = pytest.mark.mosquitto

@pytest.fixture(scope="module")
def open_broker(mosquitto_binary, tmp_path_factory):
    """One open loopback broker for the module (the fleets use distinct client ids per test)."""
    with MosquittoProcess(BrokerConfig(persistence=False), workdir=tmp_path_factory.mktemp("mosquitto"),
                          binary=mosquitto_binary) as broker:
        yield broker


SMALL = dict(devices=20, rounds=4, clients_per_round=10, epochs=1, seed=3)


@pytest.mark.slow
def test_mqtt_fleet_matches_the_in_memory_fleet(open_broker, tmp_path):
    # The default over-selection (13 asked, the first 10 reports close a round): over MQTT,
    # thread timing would decide which 10, so the simulator decides instead (stragglers.py),
    # and both transports aggregate the same devices. 20 rounds: the global model is past 60%.
    common = dict(SMALL, rounds=20)
    memory = run_simulation(SimConfig(**common, out_dir=str(tmp_path / "memory")))
    mqtt = run_simulation(SimConfig(**common, out_dir=str(tmp_path / "mqtt"), transport="mqtt",
                                    broker_url=open_broker.url, round_deadline_s=60))
    assert mqtt.config["over_selection"] == memory.config["over_selection"] == 1.3
    for run in (memory, mqtt):
        assert [(r["selected"], r["participants"]) for r in run.rounds] == [(13, 10)] * 20
    assert memory.rounds[-1]["global_accuracy"] >= 0.6
    for key in ("global_accuracy", "personalized_accuracy_mean"):
        assert abs(mqtt.rounds[-1][key] - memory.rounds[-1][key]) <= 0.01, key
    assert mqtt.rounds[-1]["personalized_accuracy_mean"] > mqtt.rounds[0]["personalized_accuracy_mean"]
    # The stragglers' answers came after their rounds closed, and nothing else was refused.
    assert set(mqtt.summary["rejections"]) <= {"stale_round"}
    assert memory.summary["rejections"] == {"stale_round": 3 * 20}


def test_the_same_seed_picks_the_same_stragglers_from_the_selected_devices():
    selected = tuple(f"dev-{i:03d}" for i in range(13))
    late = choose_stragglers(selected, 10, seed=3, round_id=5)
    assert len(late) == 3 and late <= set(selected)
    assert choose_stragglers(tuple(reversed(selected)), 10, seed=3, round_id=5) == late  # not the order
    assert len({choose_stragglers(selected, 10, 3, r) for r in range(1, 30)}) > 10  # varies by round
    assert choose_stragglers(selected, 13, 3, 5) == frozenset()


def _profile(tmp_path, dropout: float) -> str:
    path = tmp_path / f"vanish-{dropout}.toml"
    path.write_text(f'name = "vanishing"\ndropout_probability = {dropout}\n[trace]\nlink = "ethernet"\n')
    return str(path)


def test_rounds_commit_when_30_percent_of_selected_devices_vanish(open_broker, tmp_path, monkeypatch):
    # The first 4 of the 13 selected devices to get their task each round vanish with it (the
    # link is cut without a DISCONNECT, as on power loss): 30% of the selection.
    killed: dict[int, int] = {}
    lock = threading.Lock()
    run_task = SimDeviceAgent._run_task

    def maybe_vanish(agent, task):
        with lock:
            doomed = killed.get(task.round_id, 0) < 4
            killed[task.round_id] = killed.get(task.round_id, 0) + doomed
        if doomed:
            agent.on_vanish()
        else:
            run_task(agent, task)

    monkeypatch.setattr(SimDeviceAgent, "_run_task", maybe_vanish)
    cfg = SimConfig(**dict(SMALL, rounds=3), over_selection=1.3, transport="mqtt", broker_url=open_broker.url,
                    round_deadline_s=4.0, profiles=(_profile(tmp_path, 0.0),), out_dir=str(tmp_path / "run"))
    rounds = run_simulation(cfg).rounds
    assert all(killed[r["round"]] == 4 for r in rounds)
    assert all(r["committed"] for r in rounds), rounds
    # 13 of 20 at first; vanished devices are ineligible (their Last Will) until they return.
    assert all(12 <= r["selected"] <= 13 for r in rounds), rounds
    # Each round lost 4 devices mid-round and still committed at its deadline with a quorum.
    assert all(5 <= r["participants"] <= r["selected"] - 4 for r in rounds), rounds


def test_round_without_quorum_is_abandoned_and_retried_under_a_new_id(open_broker, tmp_path):
    cfg = SimConfig(**dict(SMALL, rounds=2), over_selection=1.3, transport="mqtt", broker_url=open_broker.url,
                    round_deadline_s=2.0, profiles=(_profile(tmp_path, 0.95),), out_dir=str(tmp_path / "run"))
    result = run_simulation(cfg)
    assert [r["round"] for r in result.rounds] == [1, 2]
    assert not any(r["committed"] for r in result.rounds)
    assert all(r["participants"] < 5 for r in result.rounds)
