"""Secure rounds over a real Mosquitto: 20 DeviceAgents and the Coordinator on MqttTransport,
30% of the cohort killed between stages (2 after advertising, 2 after sharing, 2 silent in the
unmask stage). The round commits the plain mean of the survivors' quantized updates, on the
complete graph (plain shares) and on a sparse one (k = 16 of the 20 who advertised: packed
shares, t = 10, so even an owner whose 6 absent devices are all its neighbours keeps t)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.service import coordinator_link
from fedge.coordinator.strategies import make_strategy
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
from tests.coordinator.fleet import HYPER, NO_EVAL, local_data
from tests.secagg.fleet_round import SECURE, SETTINGS, _expected_mean, _flat
from tests.tiny_model import build_tiny_model

DEVICES = 20
KILL_AT_STAGE = {1: ("dev03", "dev11"), 2: ("dev05", "dev17"), 3: ("dev08", "dev14")}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _settle(coordinator, agents, until, quiet_s: float = 0.4, limit_s: float = 30.0) -> None:
    """Deliver until `until()` holds and nothing has moved for quiet_s. A quiet spell alone was
    not an answer: a broker or device thread held up for quiet_s on a loaded machine looked like
    a device that would never answer, and the clock then went past the stage for a live one."""
    start = last = time.monotonic()
    while time.monotonic() - last < quiet_s or not until():
        assert time.monotonic() - start < limit_s, "the fleet never went quiet, or never got where it should"
        moved = coordinator.pump(0.01)
        for agent in agents:
            while agent.poll(0.0):
                moved = True
        if moved:
            last = time.monotonic()


def all_answered(coordinator, device_ids) -> bool:
    """The round's current stage expects nothing more from any of `device_ids`."""
    return not any(map(coordinator.round.machine.expects, device_ids))


@pytest.mark.parametrize("neighbours", [0, 16])
def test_twenty_devices_commit_with_thirty_percent_killed_between_stages(model, tmp_path, mosquitto, neighbours):
    art, manifest, runtime = model
    settings_ = dict(SETTINGS, secure_aggregation=dataclasses.replace(SECURE, neighbours=neighbours))
    cfg = CoordinatorConfig(clients_per_round=DEVICES, over_selection=1.0, hyper=HYPER, aggregator="mean",
                            evaluation=NO_EVAL, **settings_)
    settings = MqttSettings(url=mosquitto.url, reconnect_min_s=0.1, reconnect_max_s=0.5)
    clock = ManualClock()
    links = [MqttTransport("coordinator", coordinator_link(settings, cfg)).connect()]
    coordinator = Coordinator(links[0], make_strategy("fedavg", cfg.hyper), manifest, runtime.initial("shared"), cfg,
                              clock=clock)
    rng = np.random.default_rng(0)
    agents = []
    try:
        coordinator.start()
        for i in range(DEVICES):
            device = DeviceRuntime(f"dev{i:02d}", local_data(rng, 12 + i), {manifest.model_id: art},
                                   tmp_path / "devices", seed=i)
            links.append(MqttTransport(f"dev{i:02d}", settings).connect())
            agents.append(DeviceAgent(device, links[-1], clock=clock))
            agents[-1].start()
        everyone = list(agents)
        _settle(coordinator, agents, lambda: len(coordinator.eligible_devices()) == DEVICES)
        old = _flat(coordinator.state.params)
        assert coordinator.begin_round()
        killed: set[str] = set()
        record = None
        for _ in range(20):
            stage = coordinator.round.machine.stage
            for victim in KILL_AT_STAGE.get(stage, ()):
                if victim not in killed:  # killed: its link closes, it never answers again
                    killed.add(victim)
                    agent = next(a for a in agents if a.device_id == victim)
                    agent.transport.close()
                    agents.remove(agent)
            # every device still alive has answered the stage (only the killed ones are missing)
            _settle(coordinator, agents, lambda: all_answered(coordinator, [a.device_id for a in agents]))
            record = coordinator.tick()
            if record is not None:
                break
            if coordinator.round.machine.stage == stage and not coordinator.round.machine.stage_full:
                clock.advance(SECURE.stage_deadline_s + 1)  # some asked device is dead: wait out the stage
        assert record is not None and record.committed, (record, coordinator.rejections)
        (state,) = coordinator.shell.states.values()  # the round's graph, as the devices rebuilt it
        assert state.packing == (2 if neighbours else 1) and state.k == (neighbours or 19)
        in_sum = {a.device_id for a in everyone} - set(KILL_AT_STAGE[1]) - set(KILL_AT_STAGE[2])
        # 16 inputs are in the sum (14 devices answered the unmask stage)
        assert record.reports == len(in_sum) == 16
        expected = _expected_mean(type("F", (), {"agents": everyone})(), in_sum)
        np.testing.assert_allclose(_flat(coordinator.state.params) - old, expected, rtol=0, atol=1e-6)
    finally:
        for link in links:
            link.close()
