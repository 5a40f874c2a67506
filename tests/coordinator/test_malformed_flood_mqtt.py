"""The 10,000-message flood again, but through a real Mosquitto: every malformed payload
crosses the broker and paho before the coordinator sees it. Same bar: each is refused with
its named reason, the coordinator keeps serving, RSS grows by < 50 MB, the round commits."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace

import numpy as np

from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from coordinator.store import RoundStore
from coordinator.strategies import strategy_from_config
from edge_runtime.codec import encode_message
from edge_runtime.protocol import TrainTask
from edge_runtime.transport.mqtt import MqttSettings, MqttTransport
from tests.coordinator.fleet import EXACT, HYPER, ManualDevice, assert_params, copy_params, fedavg_oracle, random_delta
from tests.coordinator.test_malformed_flood import KINDS, MAX_BYTES, PER_KIND, WARM_UP_PER_KIND, Flood, _rss
from tests.tiny_model import build_tiny_model


class Connector:
    """What ManualDevice needs from a fleet's broker: connect(client_id) -> Transport."""

    def __init__(self, url: str):
        self.settings = MqttSettings(url=url, reconnect_min_s=0.1, reconnect_max_s=0.5)
        self.open: list[MqttTransport] = []

    def connect(self, client_id: str) -> MqttTransport:
        transport = MqttTransport(client_id, self.settings).connect()
        self.open.append(transport)
        return transport


def _has_task(device: ManualDevice) -> bool:
    device.receive()
    return any(isinstance(m, TrainTask) for m in device.inbox)


def _pump_until(coordinator, done, timeout_s=60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        coordinator.pump(0.05)
        assert time.monotonic() < deadline, "the coordinator did not get everything in time"


def _flood(coordinator, flood: Flood, per_kind: int, rng) -> Counter:
    """Send per_kind of every kind in a shuffled order; returns the expected reasons once the
    coordinator has judged them all."""
    order = rng.permutation(np.repeat(np.arange(len(KINDS)), per_kind))
    judged_before = sum(coordinator.rejections.values())
    expected: Counter[str] = Counter()
    for n, k in enumerate(order):
        reason, sender, payload = flood.make(KINDS[k], n)
        expected[reason] += 1
        sender.send(payload)
        if n % 200 == 199:
            # Wait until the coordinator judged this batch: Mosquitto queues at most
            # max_queued_messages (1000) for a client that falls behind and drops the rest,
            # which on a loaded machine would lose flood messages before they are judged.
            flood.a.t.flush(30), flood.b.t.flush(30)
            done = judged_before + sum(expected.values())
            _pump_until(coordinator, lambda: sum(coordinator.rejections.values()) >= done)
            flood.a.discard(), flood.b.discard()
    want = judged_before + sum(expected.values())
    _pump_until(coordinator, lambda: sum(coordinator.rejections.values()) >= want)
    flood.a.discard(), flood.b.discard()
    return expected


def test_ten_thousand_malformed_payloads_through_mosquitto(mosquitto, tmp_path):
    _, manifest, runtime = build_tiny_model(tmp_path / "artifacts")
    cfg = CoordinatorConfig(clients_per_round=3, min_reports=3, over_selection=1.0, hyper=HYPER, compression=EXACT,
                            max_update_bytes=MAX_BYTES)
    broker = Connector(mosquitto.url)
    coordinator = Coordinator(broker.connect("coordinator"), strategy_from_config(cfg), manifest,
                              runtime.initial("shared"), cfg, store=RoundStore(tmp_path / "state.db"))
    try:
        coordinator.start()
        fleet = SimpleNamespace(broker=broker, coordinator=coordinator)
        a, b, c = (ManualDevice(fleet, d, n) for d, n in (("a", 7), ("b", 19), ("c", 4)))
        _pump_until(coordinator, lambda: len(coordinator.registry) == 3)
        old = copy_params(coordinator.state.params)
        shapes = {k: v.shape for k, v in old.items()}
        rng = np.random.default_rng(7)
        assert coordinator.begin_round()
        deadline = time.monotonic() + 10
        while not all(_has_task(d) for d in (a, b, c)):
            assert time.monotonic() < deadline, "tasks did not arrive"
            time.sleep(0.02)
        good = {d.id: d.update(random_delta(shapes, rng), update_id=f"good-{d.id}") for d in (a, b, c)}
        a.send(encode_message(good["a"]))
        _pump_until(coordinator, lambda: coordinator.round.machine.reported == ["a"])
        flood = Flood(a, b, good["a"], good["b"], shapes, rng)

        expected = _flood(coordinator, flood, WARM_UP_PER_KIND, rng)
        before = _rss()
        expected += _flood(coordinator, flood, PER_KIND, rng)
        grown = _rss() - before

        assert sum(expected.values()) == len(KINDS) * (PER_KIND + WARM_UP_PER_KIND)
        assert coordinator.rejections == expected
        assert grown < 50 << 20, f"RSS grew by {grown / 2**20:.1f} MB"

        b.send(encode_message(good["b"]))
        c.send(encode_message(good["c"]))
        _pump_until(coordinator, lambda: len(coordinator.round.machine.reported) == 3)
        record = coordinator.tick()
        assert record.committed and record.reports == 3
        assert_params(coordinator.state.params, fedavg_oracle(old, [good["a"], good["b"], good["c"]]))
    finally:
        for transport in broker.open:
            transport.close()
