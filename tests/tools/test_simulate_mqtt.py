"""The simulator over a real Mosquitto: same results as in-memory, and rounds that survive
devices vanishing mid-round (or are abandoned cleanly when too few are left)."""

from __future__ import annotations

import itertools
import threading

import pytest

from fedge.tools.broker import BrokerConfig, MosquittoProcess
from fedge.tools.simulate.config import sim_config
from fedge.tools.simulate.fleet import run_simulation
from fedge.tools.simulate.mqtt_fleet import SimDevice, SimDeviceAgent
from fedge.tools.simulate.stragglers import StragglerPlan, choose_stragglers

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
    memory = run_simulation(sim_config(**common, out_dir=str(tmp_path / "memory")))
    mqtt = run_simulation(sim_config(**common, out_dir=str(tmp_path / "mqtt"), transport="mqtt",
                                    broker_url=open_broker.url, round_deadline_s=60))
    assert mqtt.config["coordinator"]["over_selection"] == memory.config["coordinator"]["over_selection"] == 1.3
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


class Died(Exception):
    """Raised in the training loop of a device that just lost power."""


def test_rounds_commit_when_30_percent_of_selected_devices_die_mid_training(open_broker, tmp_path, monkeypatch):
    # 7 reports wanted, 10 selected (over-selection 1.3); the first 3 devices to start training
    # each round die a few steps in (the link is cut without a DISCONNECT, as on power loss):
    # 30% of the selection. The 7 that are left are just enough, so a round closes on its
    # reports; the 20 s deadline is only a bound for a loaded machine.
    dead: dict[int, list[str]] = {}  # round -> the devices doomed in it (the first 3 to start training)
    died: list[tuple[int, str]] = []  # (round, device) whose power was cut: a doomed device that declined
    # before its third step (past its deadline on a loaded machine) lives on and may be doomed again
    selections: dict[int, tuple[str, ...]] = {}
    lock = threading.Lock()
    train = SimDeviceAgent._train

    def maybe_die(agent, task):
        with lock:
            doomed = len(dead.setdefault(task.round_id, [])) < 3
            if doomed:
                dead[task.round_id].append(agent.device_id)
        if not doomed:
            return train(agent, task)
        check, steps = agent.runtime.abort_check, itertools.count(1)

        def power_cut():
            if next(steps) == 3:  # training has started: three steps in
                with lock:
                    died.append((task.round_id, agent.device_id))
                agent.on_vanish()
                raise Died(agent.device_id)
            return check()

        agent.runtime.abort_check = power_cut
        try:
            train(agent, task)
        except Died:
            pass
        finally:
            agent.runtime.abort_check = check

    monkeypatch.setattr(SimDeviceAgent, "_train", maybe_die)
    init = SimDevice.__init__

    def stays_gone(self, *args, **kwargs):
        init(self, *args, **kwargs)
        # The dead come back after 2 x the deadline (40 s); on a loaded 2-core box three rounds can
        # take longer, and a device back from the dead may rightly be chosen again. Not here.
        self.rejoin_s = 3600.0

    monkeypatch.setattr(SimDevice, "__init__", stays_gone)
    begin = StragglerPlan.begin

    def remember(plan, round_id, selected, wanted):
        selections[round_id] = tuple(selected)
        return begin(plan, round_id, selected, wanted)

    monkeypatch.setattr(StragglerPlan, "begin", remember)
    cfg = sim_config(**dict(SMALL, rounds=3, clients_per_round=7), over_selection=1.3, transport="mqtt",
                    broker_url=open_broker.url, round_deadline_s=20.0, profiles=(_profile(tmp_path, 0.0),),
                    out_dir=str(tmp_path / "run"))
    rounds = run_simulation(cfg).rounds
    assert all(len(dead[r["round"]]) == 3 for r in rounds)
    assert all(r["committed"] for r in rounds), rounds
    # 10 of 20 are selected; the dead are ineligible (their Last Will) until they return, and
    # each round commits with the 7 that are left, on their reports, not at the deadline.
    assert all(r["selected"] == 10 and r["participants"] == 7 for r in rounds), rounds
    # Power was cut on devices in every round, and the coordinator never selected one of them
    # again (its Last Will made it ineligible; it stays gone for the test).
    assert {r for r, _ in died} == {r["round"] for r in rounds}, died
    for round_id, device in died:
        later = [r for r, chosen in selections.items() if r > round_id and device in chosen]
        assert not later, (device, round_id, later)


def test_the_simulator_fails_when_devices_do_not_check_in(open_broker, tmp_path, monkeypatch):
    from fedge.tools.simulate.errors import FleetNotReady
    from fedge.tools.simulate.fleet import prepare
    from fedge.tools.simulate.mqtt_fleet import MqttFleet, SimDevice

    start = SimDevice.start
    monkeypatch.setattr(SimDevice, "start", lambda d: None if d.runtime.device_id.endswith("7") else start(d))
    cfg = sim_config(**dict(SMALL, rounds=1), transport="mqtt", broker_url=open_broker.url,
                    out_dir=str(tmp_path / "run"))
    with pytest.raises(FleetNotReady, match=r"only 18 of 20 devices checked in .*missing: dev-007, dev-017"):
        MqttFleet(prepare(cfg), connect_timeout_s=5)


def test_round_without_quorum_is_abandoned_and_retried_under_a_new_id(open_broker, tmp_path):
    cfg = sim_config(**dict(SMALL, rounds=2), over_selection=1.3, transport="mqtt", broker_url=open_broker.url,
                    round_deadline_s=2.0, profiles=(_profile(tmp_path, 0.95),), out_dir=str(tmp_path / "run"))
    result = run_simulation(cfg)
    assert [r["round"] for r in result.rounds] == [1, 2]
    assert not any(r["committed"] for r in result.rounds)
    assert all(r["participants"] < 5 for r in result.rounds)
