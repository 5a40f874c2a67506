"""The 10,000-message flood again, but through a real Mosquitto: every malformed payload
crosses the broker and paho before the coordinator sees it. Same bar: each is refused with
its named reason, the coordinator keeps serving, RSS grows by < 50 MB, the round commits.
Then a flood of chunk frames, which the coordinator's transport drops before reassembly."""

from __future__ import annotations

import dataclasses
import struct
import time
from collections import Counter
from types import SimpleNamespace

import numpy as np
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.service import coordinator_link
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import TrainTask, device_topic
from fedge.edge_runtime.kernel.transport.chunks import split_message
from fedge.edge_runtime.kernel.transport.mqtt import MqttTransport
from fedge.edge_runtime.kernel.transport.settings import MqttSettings
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


def _await_tasks(devices, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_has_task(d) for d in devices):
        assert time.monotonic() < deadline, "tasks did not arrive"
        time.sleep(0.02)


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
            _pump_until(coordinator, lambda: sum(coordinator.rejections.values()) >= done)  # noqa: B023 - called here
            flood.a.discard(), flood.b.discard()
    want = judged_before + sum(expected.values())
    _pump_until(coordinator, lambda: sum(coordinator.rejections.values()) >= want)
    flood.a.discard(), flood.b.discard()
    return expected


def test_ten_thousand_malformed_payloads_through_mosquitto(mosquitto, tmp_path):
    _, manifest, runtime = build_tiny_model(tmp_path / "artifacts")
    cfg = CoordinatorConfig(clients_per_round=3, min_reports=3, over_selection=1.0, hyper=HYPER, compression=EXACT,
                            max_update_bytes=MAX_BYTES, aggregator="mean")  # the oracle: the honest updates' mean
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
        _await_tasks((a, b, c))
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


def test_link_limits_follow_max_update_bytes():
    cfg = CoordinatorConfig(max_update_bytes=1 << 20, clients_per_round=10, over_selection=1.3)
    link = coordinator_link(MqttSettings(), cfg)
    assert link.inbound_limit == 1 << 20  # one sender holds at most one update in incomplete sets
    assert link.pending_limit == 13 << 20  # one update from each selected device
    assert link.max_message_bytes == MqttSettings().max_message_bytes  # publishing is not limited by it
    tighter = coordinator_link(MqttSettings(max_inbound_bytes=1000, max_pending_bytes=5000), cfg)
    assert (tighter.inbound_limit, tighter.pending_limit) == (1000, 5000)


CHUNK_FLOOD_SETS = 2000
CHUNK_FLOOD_OVERSIZE = 500


def test_a_chunk_flood_is_dropped_by_name_and_pins_no_more_than_an_update_per_sender(mosquitto, tmp_path):
    """Incomplete chunk sets spread over every channel of several devices, and sets declaring
    totals over max_update_bytes (up to 1 GiB): each frame is dropped by name in the transport,
    one device never holds more than max_update_bytes of reassembly memory, all of them no more
    than the derived total, and a genuine chunked update still gets in and the round commits."""
    _, manifest, runtime = build_tiny_model(tmp_path / "artifacts")
    cfg = CoordinatorConfig(clients_per_round=2, min_reports=2, over_selection=1.0, hyper=HYPER, compression=EXACT,
                            max_update_bytes=MAX_BYTES, aggregator="mean")  # the oracle: the honest updates' mean
    broker = Connector(mosquitto.url)
    link = coordinator_link(broker.settings, cfg)
    coord_transport = MqttTransport("coordinator", link).connect()
    broker.open.append(coord_transport)
    coordinator = Coordinator(coord_transport, strategy_from_config(cfg), manifest, runtime.initial("shared"), cfg)
    rx = coord_transport._inbox.reassembler
    try:
        coordinator.start()
        fleet = SimpleNamespace(broker=broker, coordinator=coordinator)
        a, b = ManualDevice(fleet, "a", 7), ManualDevice(fleet, "b", 19)
        flooders = [ManualDevice(fleet, f"f{i}", 3, eligible=False) for i in range(3)]
        _pump_until(coordinator, lambda: len(coordinator.registry) == 5)
        old = copy_params(coordinator.state.params)
        shapes = {k: v.shape for k, v in old.items()}
        rng = np.random.default_rng(3)
        assert coordinator.begin_round()
        _await_tasks((a, b))

        channels = ("update", "checkin", "fetch", "status")
        senders = [a, *flooders]
        sent_sets = sent_oversize = 0
        peak_total = peak_sender = 0
        for n in range(CHUNK_FLOOD_SETS + CHUNK_FLOOD_OVERSIZE):
            sender, channel = senders[n % len(senders)], channels[n % len(channels)]
            if n % 5 == 4:  # a declared total over the limit, from just over it to 1 GiB
                total = MAX_BYTES + 1 + int(rng.integers(0, 1 << 30))
                frame = _first_chunk(total, rng)
                sent_oversize += 1
            else:  # the first ~1 KB of a set that never completes
                frame = split_message(rng.bytes(int(rng.integers(1100, MAX_BYTES))), 1066)[0]
                sent_sets += 1
            sender.send(frame, channel=channel)
            if n % 250 == 249:  # stay under Mosquitto's per-client queue; sample memory as we go
                for s in senders:
                    s.t.flush(30)
                _wait_judged(coord_transport, sent_sets, sent_oversize)
                with coord_transport._inbox.lock:
                    peak_total = max(peak_total, rx.pending_bytes)
                    peak_sender = max(peak_sender, *(rx.sender_bytes(device_topic(s.id, "update")) for s in senders))
        _wait_judged(coord_transport, sent_sets, sent_oversize)
        assert (sent_sets, sent_oversize) == (CHUNK_FLOOD_SETS, CHUNK_FLOOD_OVERSIZE)
        dropped = coord_transport.dropped
        assert dropped["oversize"] == CHUNK_FLOOD_OVERSIZE  # named: PayloadTooLarge's reason
        assert dropped["chunks_evicted"] > 0  # each device's own sets gave way to its newer ones
        assert 0 < peak_sender <= MAX_BYTES
        assert 0 < peak_total <= link.pending_limit == 4 * MAX_BYTES
        assert coordinator.rejections == Counter()  # nothing of it reached the coordinator
        exported = {s.labels.get("reason"): s.value for f in text_string_to_metric_families(
            generate_latest(coordinator.metrics.registry).decode()) if f.name == "fedge_transport_dropped"
            for s in f.samples}
        assert exported["oversize"] == CHUNK_FLOOD_OVERSIZE and exported["chunks_evicted"] > 0

        # Genuine updates still get in, b's chunked (its transport splits at a small packet size).
        good = {d.id: d.update(random_delta(shapes, rng), update_id=f"good-{d.id}") for d in (a, b)}
        a.send(encode_message(good["a"]))
        b.t.close()  # b again, on a connection that splits at a small packet size
        small = MqttTransport("b", MqttSettings(url=mosquitto.url, max_packet_size=1024)).connect()
        broker.open.append(small)
        good["b"] = dataclasses.replace(good["b"], metrics={f"m{k}": float(k) for k in range(150)})  # padding
        payload = encode_message(good["b"])
        assert 2 * small.max_payload < len(payload) <= MAX_BYTES, "b's update must be chunked for this test"
        small.publish(device_topic("b", "update"), payload)
        _pump_until(coordinator, lambda: len(coordinator.round.machine.reported) == 2)
        record = coordinator.tick()
        assert record.committed and record.reports == 2
        assert_params(coordinator.state.params, fedavg_oracle(old, [good["a"], good["b"]]))
    finally:
        for transport in broker.open:
            transport.close()


def _first_chunk(total: int, rng) -> bytes:
    """The first chunk of a set that declares `total` bytes (only the header needs to say so)."""
    frame = bytearray(split_message(rng.bytes(2000), 1066)[0])
    struct.pack_into("<I", frame, 30, total)  # u32 total length, at offset 30 of the chunk header
    return bytes(frame)


def _wait_judged(transport: MqttTransport, sets: int, oversize: int, timeout_s: float = 60.0) -> None:
    """Until the transport has taken every frame sent: each set is pending, evicted or refused."""
    deadline = time.monotonic() + timeout_s
    while True:
        with transport._inbox.lock:
            rx = transport._inbox.reassembler
            taken = rx.pending_sets + rx.dropped["chunks_evicted"]
        dropped = transport.dropped
        if taken + dropped["chunk_memory_full"] >= sets and dropped["oversize"] >= oversize:
            return
        assert time.monotonic() < deadline, f"the coordinator's transport did not take the flood in time: {dropped}"
        time.sleep(0.02)
