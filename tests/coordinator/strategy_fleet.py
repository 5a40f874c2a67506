"""The toy fleet the strategy tests train: `toy_fleet` builds a Coordinator with
`strategy_from_config(cfg)` and real DeviceAgents over the in-memory broker, on non-IID
separable data (`separable_data`) of unequal sizes (`toy_sizes`); NAMES lists every strategy.
Used by test_strategy_math.py, test_strategy_fleets.py and test_strategy_restart.py."""

from __future__ import annotations

import numpy as np

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.protocol import all_devices_topic
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from tests.coordinator.fleet import Fleet
from tests.tiny_model import CLASSES, FEATURES

NAMES = ("fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedadam", "fedyogi")


def separable_data(rng, label_mix, n=40, n_test=20):
    """Three Gaussian classes 2.5 sigma apart along fixed directions; labels drawn from `label_mix`."""
    means = 2.5 * np.eye(FEATURES, dtype=np.float32)[:CLASSES]
    y = rng.choice(CLASSES, size=n + n_test, p=label_mix)
    x = (means[y] + rng.normal(size=(n + n_test, FEATURES))).astype(np.float32)
    return LocalData(x[:n], y[:n], x[n:], y[n:])


def toy_sizes(devices: int) -> list[int]:
    """Local examples per device: unequal (16 to 72), so a formula that weighs by example count
    where the paper takes a plain mean, or the reverse, changes the numbers the tests check."""
    return [16 + 8 * ((3 * i) % 8) for i in range(devices)]


def toy_fleet(model, tmp_path, cfg: CoordinatorConfig, devices=8, decline_p=0.0, seed=0, store=None) -> Fleet:
    """A Coordinator with `strategy_from_config(cfg)` and `devices` real agents on non-IID
    separable data (each device mostly sees two of the three classes) of unequal sizes."""
    art, manifest, runtime = model
    broker, clock = InMemoryBroker(), ManualClock()
    coordinator = Coordinator(broker.connect("coordinator"), strategy_from_config(cfg), manifest,
                              runtime.initial("shared"), cfg, clock=clock, store=store)
    coordinator.start()
    spy = broker.connect("spy")
    spy.subscribe(all_devices_topic("update"))
    rng = np.random.default_rng(seed)
    agents = []
    for i in range(devices):
        mix = np.full(CLASSES, 0.05)
        mix[i % CLASSES] += 0.6
        mix[(i + 1) % CLASSES] += 0.3
        coin = np.random.default_rng([seed, i])
        eligibility = (lambda c=coin: "battery_low" if c.random() < decline_p else None) if decline_p else None
        data = separable_data(rng, mix / mix.sum(), n=toy_sizes(devices)[i])
        device = DeviceRuntime(f"dev{i}", data, {manifest.model_id: art},
                               tmp_path / "devices", eligibility=eligibility, abort_check=lambda: None, seed=i)
        agents.append(DeviceAgent(device, broker.connect(f"dev{i}"), clock=clock))
    for agent in agents:
        agent.start()
    fleet = Fleet(broker, coordinator, clock, agents, spy, model)
    fleet.drain()
    return fleet
