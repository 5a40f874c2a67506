"""The Coordinator over the in-memory broker, with real devices and hand-driven ones.

Oracles: the committed global params are recomputed from the Update messages a spy
client sees on the wire (old + example-weighted mean of the decoded deltas); rejected
messages must leave no trace in that mean.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from coordinator.strategies import make_strategy
from edge_runtime.agent import DeviceAgent
from edge_runtime.clock import ManualClock
from edge_runtime.codec import HEADER_SIZE, TRAILER_SIZE, decode_message, encode_message
from edge_runtime.compress import CompressedTensor, decompress_update
from edge_runtime.device import DeviceRuntime, LocalData
from edge_runtime.protocol import (Ack, CheckIn, CompressionSpec, TaskHyper, TrainTask, Update,
                                   all_devices_topic, device_topic)
from edge_runtime.transport.memory import InMemoryBroker
from edge_runtime.update_codec import decode_tensors, encode_dense, encode_tensors

from tests.tiny_model import CLASSES, FEATURES, build_tiny_model
HYPER = TaskHyper(epochs=2, batch_size=8, lr=0.1)
EXACT = CompressionSpec(quant_bits=32)  # fp32, dense: the wire carries the delta exactly


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@dataclass
class Fleet:
    broker: InMemoryBroker
    coordinator: Coordinator
    clock: ManualClock
    agents: list[DeviceAgent]
    spy: object  # a client that sees every update and task on the wire
    wire: list = field(default_factory=list)  # decoded messages the spy saw

    def drain(self) -> None:
        """Deliver messages until every queue is empty."""
        moved = True
        while moved:
            moved = False
            while self.coordinator.pump(0.0):
                moved = True
            for agent in self.agents:
                while agent.poll(0.0):
                    moved = True
        while (msg := self.spy.receive(0.0)) is not None:
            try:
                self.wire.append(decode_message(msg.payload))
            except Exception:
                pass  # crafted garbage

    def updates(self) -> list[Update]:
        return [m for m in self.wire if isinstance(m, Update)]

    def tasks(self) -> list[TrainTask]:
        return [m for m in self.wire if isinstance(m, TrainTask)]


def _data(rng: np.random.Generator, n: int) -> LocalData:
    x = rng.normal(size=(n + 6, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=n + 6)
    return LocalData(x[:n], y[:n], x[n:], y[n:])


def _fleet(model, tmp_path, sizes=(), eligibility=None, **config) -> Fleet:
    art, manifest, runtime = model
    cfg = CoordinatorConfig(**{"clients_per_round": max(1, len(sizes)), "over_selection": 1.0, "hyper": HYPER,
                               "compression": EXACT, **config})
    broker = InMemoryBroker()
    clock = ManualClock()
    coordinator = Coordinator(broker.connect("coordinator"), make_strategy("fedavg", cfg.hyper), manifest,
                              runtime.initial("shared"), cfg, clock=clock)
    coordinator.start()
    spy = broker.connect("spy")
    spy.subscribe(all_devices_topic("update"))
    spy.subscribe(all_devices_topic("task"))
    rng = np.random.default_rng(0)
    agents = []
    for i, n in enumerate(sizes):
        device = DeviceRuntime(f"dev{i}", _data(rng, n), {manifest.model_id: art}, tmp_path / "devices",
                               eligibility=eligibility, seed=i)
        agents.append(DeviceAgent(device, broker.connect(f"dev{i}"), clock=clock))
    for agent in agents:
        agent.start()
    fleet = Fleet(broker, coordinator, clock, agents, spy)
    fleet.drain()
    return fleet


def _copy(params):
    return {k: np.array(v, copy=True) for k, v in params.items()}


def _fedavg_oracle(old, updates: list[Update]) -> dict[str, np.ndarray]:
    """old + sum_i n_i * delta_i / sum_i n_i, in float64, from the bytes that crossed the wire."""
    total = sum(u.num_examples for u in updates)
    out = {}
    for name, value in old.items():
        acc = np.zeros(value.shape, np.float64)
        for u in updates:
            acc += u.num_examples * decompress_update(decode_tensors(u.payload))[name].astype(np.float64)
        out[name] = value.astype(np.float64) + acc / total
    return out


def _assert_params(got, want):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------- (a), (b): real devices


def test_round_commits_the_example_weighted_mean_of_the_wire_deltas(model, tmp_path):
    fleet = _fleet(model, tmp_path, sizes=(10, 20, 35))
    old = _copy(fleet.coordinator.state.params)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()

    assert record is not None and record.committed, record
    assert (record.round_id, record.selected, record.reports) == (1, 3, 3)
    assert fleet.coordinator.state.version == 1
    assert fleet.coordinator.rejections == Counter()
    updates = fleet.updates()
    assert sorted(u.num_examples for u in updates) == [10, 20, 35]
    _assert_params(fleet.coordinator.state.params, _fedavg_oracle(old, updates))

    # The oracle has teeth: training moved the params, and the weights matter.
    deltas = [decompress_update(decode_tensors(u.payload)) for u in updates]
    assert all(np.abs(d["head_global.weight"]).max() > 1e-4 for d in deltas)
    plain = np.mean([d["head_global.weight"] for d in deltas], axis=0)
    assert not np.allclose(fleet.coordinator.state.params["head_global.weight"],
                           old["head_global.weight"] + plain, rtol=1e-4, atol=1e-6)

    # Every device got its Ack and holds nothing pending.
    assert all(not a.pending for a in fleet.agents)


def test_second_round_trains_from_the_committed_params(model, tmp_path):
    fleet = _fleet(model, tmp_path, sizes=(10, 20, 35))
    fleet.coordinator.begin_round()
    fleet.drain()
    fleet.coordinator.tick()
    after_one = _copy(fleet.coordinator.state.params)
    fleet.wire.clear()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record.committed and record.round_id == 2
    assert {t.model_version for t in fleet.tasks()} == {1}
    assert {u.base_version for u in fleet.updates()} == {1}
    _assert_params(fleet.coordinator.state.params, _fedavg_oracle(after_one, fleet.updates()))


def test_personal_params_never_leave_the_device(model, tmp_path):
    _, manifest, _ = model
    shared = {p.name for p in manifest.by_role("shared")}
    personal = {p.name for p in manifest.by_role("personal")}
    assert personal and shared
    fleet = _fleet(model, tmp_path, sizes=(10, 20, 35))
    for _ in range(2):
        fleet.coordinator.begin_round()
        fleet.drain()
        assert fleet.coordinator.tick().committed
    assert len(fleet.updates()) == 6 and len(fleet.tasks()) == 6
    for update in fleet.updates():
        names = {t.name for t in decode_tensors(update.payload)}
        assert names == shared
        assert not names & personal
    for task in fleet.tasks():
        assert {t.name for t in decode_tensors(task.params)} == shared
    assert not set(fleet.coordinator.state.params) & personal


# ---------------------------------------------------------------- (c): rejections


class ManualDevice:
    """A device driven by the test: it checks in, reads its task and sends whatever bytes we craft."""

    def __init__(self, fleet: Fleet, device_id: str, num_examples: int):
        self.id = device_id
        self.n = num_examples
        self.t = fleet.broker.connect(device_id)
        self.t.subscribe(device_topic(device_id, "task"))
        self.t.subscribe(device_topic(device_id, "ack"))
        self.t.publish(device_topic(device_id, "checkin"), encode_message(CheckIn(device_id, num_examples=num_examples)))
        self.inbox: list = []

    def receive(self) -> None:
        while (msg := self.t.receive(0.0)) is not None:
            self.inbox.append(decode_message(msg.payload))

    def task(self) -> TrainTask:
        self.receive()
        return [m for m in self.inbox if isinstance(m, TrainTask)][-1]

    def acks(self) -> list[tuple[bool, str]]:
        self.receive()
        return [(m.accepted, m.reason) for m in self.inbox if isinstance(m, Ack)]

    def update(self, delta, update_id="u1", **changes) -> Update:
        task = self.task()
        fields = dict(device_id=self.id, round_id=task.round_id, task_id=task.task_id, update_id=update_id,
                      model_id=task.model_id, base_version=task.model_version, num_examples=self.n,
                      payload=encode_dense(delta))
        return Update(**{**fields, **changes})

    def send(self, payload: bytes, on: str | None = None) -> None:
        self.t.publish(device_topic(on or self.id, "update"), payload)


def _delta(shapes, rng, scale=0.01):
    return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}


def _with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _reframe(frame: bytes, version: int) -> bytes:
    """The same message frame with another schema version and a valid checksum."""
    head = frame[:4] + struct.pack("<H", version) + frame[6:HEADER_SIZE]
    return _with_crc(head + frame[HEADER_SIZE:-TRAILER_SIZE])


def _nan_payload(delta) -> bytes:
    """A dense fp32 update frame with one NaN, built by patching bytes (CompressedTensor refuses NaN)."""
    marked = _copy(delta)
    name = sorted(marked)[0]
    marked[name].flat[0] = 12345.5
    frame = encode_dense(marked)
    at = frame.index(struct.pack("<f", 12345.5))
    body = frame[:at] + struct.pack("<f", float("nan")) + frame[at + 4 : -4]
    return _with_crc(body)


def _bad_shape_payload(delta) -> bytes:
    name = sorted(delta)[0]
    tensors = []
    for n in sorted(delta):
        flat = delta[n].ravel().astype(np.float32)
        shape = (flat.size,) if n == name else delta[n].shape  # right size, wrong shape
        tensors.append(CompressedTensor(n, tuple(int(d) for d in shape), 32, 0.0, None, flat))
    assert tuple(tensors[0].shape) != delta[name].shape
    return encode_tensors(tensors)


def _decoded(update: Update):
    return decompress_update(decode_tensors(update.payload))


# Each case sends its bad message(s) from m0, and returns whether m0's good update is already in.
# Expected: the rejection reason and the Acks m0 gets for the bad phase.
def _truncated(m0, good, bad, fleet):
    m0.send(encode_message(good)[:-9])


def _malformed(m0, good, bad, fleet):
    m0.send(np.random.default_rng(3).bytes(300))


def _wrong_version(m0, good, bad, fleet):
    m0.send(_reframe(encode_message(good), version=2))


def _oversize(m0, good, bad, fleet):
    padded = dataclasses.replace(good, metrics={f"m{i}": float(i) for i in range(600)})
    assert len(encode_message(padded)) > fleet.coordinator.config.max_update_bytes
    m0.send(encode_message(padded))


def _stale_round(m0, good, bad, fleet):
    m0.send(encode_message(dataclasses.replace(bad, round_id=good.round_id - 1)))


def _duplicate(m0, good, bad, fleet):
    m0.send(encode_message(good))
    m0.send(encode_message(good))
    return True


def _conflicting(m0, good, bad, fleet):
    m0.send(encode_message(good))
    m0.send(encode_message(bad))  # same update_id, other payload
    return True


def _bad_shape(m0, good, bad, fleet):
    m0.send(encode_message(dataclasses.replace(bad, payload=_bad_shape_payload(_decoded(bad)))))


def _non_finite(m0, good, bad, fleet):
    m0.send(encode_message(dataclasses.replace(bad, payload=_nan_payload(_decoded(bad)))))


def _other_topic(m0, good, bad, fleet):
    m0.send(encode_message(good), on="m1")


CASES = {
    "truncated": (_truncated, []),
    "malformed": (_malformed, []),
    "wrong_version": (_wrong_version, []),
    "oversize": (_oversize, []),
    "stale_round": (_stale_round, [(False, "stale_round")]),
    "duplicate": (_duplicate, [(True, ""), (True, "duplicate")]),
    "conflicting_duplicate": (_conflicting, [(True, ""), (False, "conflicting_duplicate")]),
    "bad_shape": (_bad_shape, [(False, "bad_shape")]),
    "non_finite": (_non_finite, [(False, "non_finite")]),
    "other_device_topic": (_other_topic, []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_rejected_update_is_counted_kept_out_of_the_mean_and_service_goes_on(model, tmp_path, case):
    send_bad, expected_acks = CASES[case]
    reason = "stale_round" if case == "other_device_topic" else case
    fleet = _fleet(model, tmp_path, clients_per_round=2, max_update_bytes=4096)
    m0, m1 = ManualDevice(fleet, "m0", 7), ManualDevice(fleet, "m1", 19)
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(len(case))

    for round_id in (1, 2):
        old = _copy(fleet.coordinator.state.params)
        assert fleet.coordinator.begin_round()
        fleet.drain()
        d0, d1 = _delta(shapes, rng), _delta(shapes, rng)
        good0, good1 = m0.update(d0, update_id=f"r{round_id}"), m1.update(d1, update_id=f"r{round_id}")
        if round_id == 1:
            bad = m0.update(_delta(shapes, rng, scale=100.0), update_id=f"r{round_id}")
            already_in = send_bad(m0, good0, bad, fleet)
            fleet.drain()
            assert fleet.coordinator.rejections == Counter({reason: 1})
            assert m0.acks() == expected_acks
            assert fleet.coordinator.round is not None  # still open
            if not already_in:
                m0.send(encode_message(good0))
        else:
            m0.send(encode_message(good0))
        m1.send(encode_message(good1))
        fleet.drain()
        record = fleet.coordinator.tick()
        assert record is not None and record.committed and record.round_id == round_id
        assert record.reports == 2
        _assert_params(fleet.coordinator.state.params, _fedavg_oracle(old, [good0, good1]))

    assert fleet.coordinator.state.version == 2
    assert fleet.coordinator.rejections == Counter({reason: 1})  # nothing else was refused
    assert m1.acks() == [(True, ""), (True, "")]


def test_oversize_counts_the_limit_that_the_config_sets(model, tmp_path):
    """The same update that is accepted under the default limit is refused under a small one."""
    fleet = _fleet(model, tmp_path, clients_per_round=1, max_update_bytes=600)
    m0 = ManualDevice(fleet, "m0", 5)
    fleet.drain()
    fleet.coordinator.begin_round()
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    update = encode_message(m0.update(_delta(shapes, np.random.default_rng(0))))
    assert len(update) > 600
    m0.send(update)
    fleet.drain()
    assert fleet.coordinator.rejections == Counter({"oversize": 1})
    assert fleet.coordinator.tick() is None  # nothing was counted


# ---------------------------------------------------------------- (d): everyone declines


def test_round_where_everyone_declines_is_abandoned_and_nothing_is_applied(model, tmp_path):
    why = {"now": None}
    fleet = _fleet(model, tmp_path, sizes=(10, 20, 35), eligibility=lambda: why["now"])
    assert len(fleet.coordinator.eligible_devices()) == 3  # eligible at check-in
    old = _copy(fleet.coordinator.state.params)
    why["now"] = "battery_low"

    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()  # the clock never moved: quorum is out of reach early

    assert record is not None and not record.committed
    assert record.round_id == 1 and record.reports == 0 and record.seconds == 0.0
    # Quorum is 2 of 3: the machine closes at the second decline; the third is still counted.
    assert len(record.declines) == 2 and set(record.declines.values()) == {"battery_low"}
    assert fleet.coordinator.declines == Counter({"battery_low": 3})
    assert fleet.coordinator.rejections == Counter()
    assert fleet.coordinator.round is None
    assert fleet.coordinator.next_round_id == 2
    assert fleet.coordinator.state.version == 0
    for name, value in old.items():
        np.testing.assert_array_equal(fleet.coordinator.state.params[name], value)

    # The next round gets a new id and commits once the devices can train again.
    why["now"] = None
    fleet.wire.clear()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record.committed and record.round_id == 2
    assert {t.round_id for t in fleet.tasks()} == {2}
    _assert_params(fleet.coordinator.state.params, _fedavg_oracle(old, fleet.updates()))
