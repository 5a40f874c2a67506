"""`fedge coordinator serve` decisions that only MQTT runs reached (coordinator/service.py), here
on stubs: the broker's inbound limit is the smaller of [broker] max_inbound_bytes and
max_update_bytes; [service] rounds stops the loop at exactly that version and, when the stored
model is there already, exits 0 before connecting; a spent privacy budget exits 3."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest

from fedge.coordinator import service
from fedge.coordinator.config import CoordinatorConfig
from fedge.edge_runtime.kernel.transport.settings import MqttSettings


@pytest.mark.parametrize("broker_limit, update_limit", [(0, 4096), (1 << 20, 4096), (2048, 4096), (4096, 4096)])
def test_the_inbound_limit_is_the_smaller_of_the_two(broker_limit, update_limit):
    link = service.coordinator_link(MqttSettings(max_inbound_bytes=broker_limit),
                                    CoordinatorConfig(max_update_bytes=update_limit))
    assert link.max_inbound_bytes == min(broker_limit or update_limit, update_limit)


class _Transport:
    connected = False

    def __init__(self):
        self.connects = 0

    def connect(self, timeout=None):
        self.connects += 1

    def close(self):
        pass


def _serve(monkeypatch, version: int, rounds: int, exhausted=None):
    """service._serve on a stub coordinator at `version` whose loop ends with `exhausted`."""
    coordinator = SimpleNamespace(transport=_Transport(), state=SimpleNamespace(version=version),
                                  manifest=SimpleNamespace(model_id="m"), clock=SimpleNamespace(now=lambda: 7.0),
                                  registry=SimpleNamespace(drain_refreshes=DRAINED.append))
    loop = SimpleNamespace(run=lambda: None, stop=lambda: None, exhausted=exhausted)
    monkeypatch.setattr(service, "build_service", lambda cfg, epoch: (loop, coordinator))
    cfg = SimpleNamespace(coordinator=SimpleNamespace(metrics_port=0, state_db=""), broker=MqttSettings(),
                          service=service.ServiceSettings(rounds=rounds))
    return service._serve(cfg, None, threading.Event(), []), coordinator.transport.connects


DRAINED: list[float] = []  # the clock times the stub registry was asked to write its queued refreshes


def test_a_clean_stop_writes_the_registrys_queued_last_seen_refreshes(monkeypatch):
    DRAINED.clear()
    assert _serve(monkeypatch, version=4, rounds=5) == (0, 1)
    assert DRAINED == [7.0]  # once, after the loop ended (registry.drain_refreshes)


def test_a_model_already_at_the_rounds_asked_exits_0_without_connecting(monkeypatch):
    assert _serve(monkeypatch, version=5, rounds=5) == (0, 0)
    assert _serve(monkeypatch, version=4, rounds=5) == (0, 1)


def test_a_spent_privacy_budget_exits_3(monkeypatch):
    spent = SimpleNamespace(why="epsilon 8.0 spent")
    assert _serve(monkeypatch, version=2, rounds=0, exhausted=spent) == (service.EXIT_PRIVACY_BUDGET, 1) == (3, 1)


def test_the_loop_stops_at_exactly_the_rounds_asked(monkeypatch, tmp_path):
    built = {}

    class Loop:
        def __init__(self, coordinator, **kwargs):
            built.update(kwargs)

    coordinator = SimpleNamespace(state=SimpleNamespace(version=0))
    monkeypatch.setattr(service, "CoordinatorLoop", Loop)
    monkeypatch.setattr(service, "load_manifest", lambda art, verify: SimpleNamespace(by_role=lambda role: []))
    monkeypatch.setattr(service, "load_npz", lambda path: {})
    monkeypatch.setattr(service, "open_store", lambda cfg, epoch: None)
    monkeypatch.setattr(service, "cluster_transport", lambda client_id, link: None)
    monkeypatch.setattr(service, "coordinator_class", lambda cfg: lambda *a, **k: coordinator)
    monkeypatch.setattr(service, "strategy_from_config", lambda cfg: None)
    cfg = service.ServiceConfig(service=service.ServiceSettings(rounds=3),
                                coordinator=CoordinatorConfig(artifacts_dir=str(tmp_path)))
    service.build_service(cfg)
    stops = []
    for version in range(6):
        coordinator.state.version = version
        stops.append(built["should_stop"](None))
    assert stops == [version >= 3 for version in range(6)]
