"""`fedge coordinator serve` decisions that only MQTT runs reached (coordinator/service.py), here
on stubs: the broker's inbound limit is the smaller of [broker] max_inbound_bytes and
max_update_bytes; [service] rounds stops the loop at exactly that version and, when the stored
model is there already, exits 0 before connecting; a spent privacy budget exits 3."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from types import SimpleNamespace

import pytest

from fedge.coordinator import registry, service
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.errors import StoreGone, StoreLinkLost
from fedge.coordinator.leadership import FencedOut
from fedge.coordinator.memory_store import MemoryStore
from fedge.coordinator.registry import Registry
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.transport.settings import MqttSettings


@pytest.mark.parametrize("broker_limit, update_limit", [(0, 4096), (1 << 20, 4096), (2048, 4096), (4096, 4096)])
def test_the_inbound_limit_is_the_smaller_of_the_two(broker_limit, update_limit):
    link = service.coordinator_link(MqttSettings(max_inbound_bytes=broker_limit),
                                    CoordinatorConfig(max_update_bytes=update_limit))
    assert link.max_inbound_bytes == min(broker_limit or update_limit, update_limit)


class _Transport:
    """Notes what the service asked of it, in order, in `events`."""

    def __init__(self, events: list[str], connected: bool = False):
        self.connects, self.events, self.connected = 0, events, connected

    def connect(self, timeout=None):
        self.connects += 1

    def flush(self, timeout=None) -> bool:
        self.events.append("flush")  # the last round's Acks
        return True

    def close(self):
        self.events.append("close")


class _Registry:
    """The queued last-seen refreshes: drain_refreshes notes its call in `events`, raises `error` if given."""

    def __init__(self, events: list[str], error: Exception | None = None):
        self.events, self.error, self.queued_refreshes = events, error, {"a": 1.0}

    def drain_refreshes(self, clock) -> int:
        self.events.append(f"drain at {clock()}")
        if self.error is not None:
            raise self.error
        self.queued_refreshes = {}
        return 1


def _serve(monkeypatch, version: int, rounds: int, exhausted=None, events=None, connected=False, lease=None,
           lost=None, drain_error=None):
    """service._serve on a stub coordinator at `version` whose loop ends with `exhausted`; with
    `lost`, the lease watcher says the lease is gone as the loop runs."""
    events = [] if events is None else events
    coordinator = SimpleNamespace(transport=_Transport(events, connected), state=SimpleNamespace(version=version),
                                  manifest=SimpleNamespace(model_id="m"), clock=SimpleNamespace(now=lambda: 7.0),
                                  registry=_Registry(events, drain_error))
    watched = []
    loop = SimpleNamespace(run=lambda: (events.append("loop"), watched and watched[0](lost)), stop=lambda: None,
                           exhausted=exhausted)
    monkeypatch.setattr(service, "build_service", lambda cfg, epoch: (loop, coordinator))
    monkeypatch.setattr(service, "watch_lease", lambda lease, on_lost, stopping: watched.append(on_lost))
    cfg = SimpleNamespace(coordinator=SimpleNamespace(metrics_port=0, state_db=""), broker=MqttSettings(),
                          service=service.ServiceSettings(rounds=rounds))
    return service._serve(cfg, lease, threading.Event(), []), coordinator.transport.connects


def test_a_clean_stop_writes_the_queued_refreshes_after_the_acks_flush(monkeypatch):
    """Before: the drain ran before the flush of the last round's Acks, and a long one could
    outlast systemd's TimeoutStopSec and lose them (every device of the round would resend)."""
    events: list[str] = []
    assert _serve(monkeypatch, version=4, rounds=5, events=events, connected=True) == (0, 1)
    assert events == ["loop", "flush", "close", "drain at 7.0"]


def test_a_deposed_leader_writes_no_refreshes_at_stop(monkeypatch):
    events: list[str] = []
    with pytest.raises(FencedOut):
        _serve(monkeypatch, version=4, rounds=5, events=events, connected=True,
               lease=SimpleNamespace(epoch=3), lost=FencedOut("epoch 4 is newer"))
    assert events == ["loop", "flush", "close"]


def test_a_failed_drain_at_stop_is_logged_and_the_service_exits_as_it_would(monkeypatch, caplog):
    events: list[str] = []
    error = sqlite3.OperationalError("database or disk is full")
    with caplog.at_level(logging.ERROR, "fedge.coordinator"):
        assert _serve(monkeypatch, version=4, rounds=5, events=events, drain_error=error) == (0, 1)
    assert "at stop failed (OperationalError: database or disk is full); 1 stay older" in caplog.text
    with pytest.raises(StoreGone):  # but an error that stops the service is raised as before
        _serve(monkeypatch, version=4, rounds=5, drain_error=StoreGone("state_db deleted"))
    # a PostgreSQL link that broke at stop (pg_link.py) stops nothing more than the stop: logged, exit as it would
    with caplog.at_level(logging.ERROR, "fedge.coordinator"):
        assert _serve(monkeypatch, version=4, rounds=5, drain_error=StoreLinkLost("link cut")) == (0, 1)
    assert "at stop failed (StoreLinkLost: link cut)" in caplog.text


def test_a_drain_at_stop_ends_after_its_time_budget(monkeypatch):
    """The queue is written REFRESH_BATCH_MAX rows a transaction while less than DRAIN_BUDGET_S
    passed (each transaction here takes 4 s of a fake clock): what is left stays older."""
    monkeypatch.setattr(registry, "REFRESH_BATCH_MAX", 3)
    store, clock = MemoryStore(), ManualClock()
    saved = store.save_devices

    def slow(devices):
        saved(devices)
        clock.advance(4.0)

    store.save_devices = slow
    reg = Registry(store)
    for i in range(12):
        reg.register(f"d{i}", True, "", 5, 0.0, 1.0)
    clock.advance(registry.LAST_SEEN_WRITE_S)
    for i in range(12):
        reg.register(f"d{i}", True, "", 5, clock.now(), 2.0)  # due: queued
    begun = math.ceil(registry.DRAIN_BUDGET_S / 4.0)  # transactions begun at 0, 4 and 8 s of the 10 s
    assert reg.drain_refreshes(clock.now) == 3 * begun == 9
    assert sorted(reg.queued_refreshes) == ["d10", "d11", "d9"]  # the rest stay older
    assert sum(d.last_seen_wall == 2.0 for d in store.devices.values()) == 9


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
