"""Test fleets for the coordinator: a Coordinator, real device agents and hand-driven devices
over one in-memory broker and one manual clock, plus helpers that craft bad payloads."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from fedge.coordinator.async_mode.server import coordinator_class
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.evaluation import EvalConfig
from fedge.coordinator.metrics import CoordinatorMetrics
from fedge.coordinator.server import Coordinator
from fedge.coordinator.store import RoundStore
from fedge.coordinator.strategies import make_strategy
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import HEADER_SIZE, TRAILER_SIZE, decode_message, encode_message
from fedge.edge_runtime.kernel.compress import CompressedTensor, decompress_update
from fedge.edge_runtime.kernel.protocol import (
    MODEL_PARTS_FILTER,
    Ack,
    CheckIn,
    CompressionSpec,
    ModelPart,
    Pace,
    RoundModel,
    TaskHyper,
    TrainTask,
    Update,
    all_devices_topic,
    device_topic,
)
from fedge.edge_runtime.kernel.round_model import ModelAssembly
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from fedge.edge_runtime.kernel.update_codec import decode_tensors, encode_dense, encode_tensors
from tests.tiny_model import CLASSES, FEATURES

HYPER = TaskHyper(epochs=2, batch_size=8, lr=0.1)
EXACT = CompressionSpec(quant_bits=32)  # fp32, dense: the wire carries the delta exactly


@dataclass
class Fleet:
    broker: InMemoryBroker
    coordinator: Coordinator
    clock: ManualClock
    agents: list[DeviceAgent]
    spy: object  # a client that sees every update and task on the wire
    model: tuple  # (artifact dir, manifest, runtime)
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

    def retained_topics(self, prefix: str) -> list[str]:
        """Topics under `prefix` on which the broker holds a retained message now."""
        return sorted(t for t in self.broker._retained if t.startswith(prefix))

    def round_models(self) -> dict[str, RoundModel]:
        """sha256 -> RoundModel, joined from the ModelParts the spy saw."""
        assemblies, models = {}, {}
        for part in (m for m in self.wire if isinstance(m, ModelPart)):
            joined = assemblies.setdefault(part.sha256, ModelAssembly(part.sha256, 1 << 30)).accept(part)
            if joined is not None:
                models[part.sha256] = joined
        return models

    def restart(self, store: RoundStore | None = None, config: CoordinatorConfig | None = None) -> Coordinator:
        """A new Coordinator on the same broker and clock, as a restarted process would be.

        The old object is dropped without any cleanup (its client id is taken over), like a
        process killed between two statements."""
        _, manifest, runtime = self.model
        cfg = config or self.coordinator.config
        cls = coordinator_class(cfg)
        self.coordinator = cls(self.broker.connect("coordinator"), make_strategy("fedavg", cfg.hyper), manifest,
                               runtime.initial("shared"), cfg, clock=self.clock, store=store)
        self.coordinator.start()
        return self.coordinator


def local_data(rng: np.random.Generator, n: int) -> LocalData:
    x = rng.normal(size=(n + 6, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, size=n + 6)
    return LocalData(x[:n], y[:n], x[n:], y[n:])


NO_EVAL = EvalConfig(every_rounds=0)


def make_fleet(model, tmp_path, sizes=(), eligibility=None, store: RoundStore | None = None,
               metrics: CoordinatorMetrics | None = None, coordinator_cls=None, broker=None, **config) -> Fleet:
    """coordinator_cls: the class to run (default: the one the config's mode asks for); broker:
    anything with connect(client_id) -> Transport (default: a new InMemoryBroker)."""
    art, manifest, runtime = model
    # aggregator "mean": these fleets check the strategies' arithmetic against the plain weighted
    # mean of the wire deltas; the default defence (norm_bound) has its own tests. Evaluation
    # off: these tests step message by message, and an EvalTask after each commit would
    # interleave; federated evaluation has its own tests (tests/coordinator/test_evaluation.py).
    cfg = CoordinatorConfig(**{"clients_per_round": max(1, len(sizes)), "over_selection": 1.0, "hyper": HYPER,
                               "compression": EXACT, "aggregator": "mean", "evaluation": NO_EVAL, **config})
    broker = broker or InMemoryBroker()
    clock = ManualClock()
    cls = coordinator_cls or coordinator_class(cfg)
    coordinator = cls(broker.connect("coordinator"), make_strategy("fedavg", cfg.hyper), manifest,
                      runtime.initial("shared"), cfg, clock=clock, store=store, metrics=metrics)
    coordinator.start()
    spy = broker.connect("spy")
    spy.subscribe(all_devices_topic("update"))
    spy.subscribe(all_devices_topic("task"))
    spy.subscribe(MODEL_PARTS_FILTER)
    rng = np.random.default_rng(0)
    agents = []
    for i, n in enumerate(sizes):
        device = DeviceRuntime(f"dev{i}", local_data(rng, n), {manifest.model_id: art}, tmp_path / "devices",
                               eligibility=eligibility, seed=i)
        agents.append(DeviceAgent(device, broker.connect(f"dev{i}"), clock=clock))
    for agent in agents:
        agent.start()
    fleet = Fleet(broker, coordinator, clock, agents, spy, model)
    fleet.drain()
    return fleet


class ManualDevice:
    """A device driven by the test: it checks in, reads its task and sends whatever bytes we craft."""

    def __init__(self, fleet: Fleet, device_id: str, num_examples: int, eligible: bool = True):
        self.id = device_id
        self.n = num_examples
        self.t = fleet.broker.connect(device_id)
        self.t.subscribe(device_topic(device_id, "task"))
        self.t.subscribe(device_topic(device_id, "ack"))
        self.inbox: list = []
        self.check_in(eligible)

    def check_in(self, eligible: bool = True, reason: str = "") -> None:
        self.t.publish(device_topic(self.id, "checkin"),
                       encode_message(CheckIn(self.id, eligible=eligible, reason=reason, num_examples=self.n)))

    def receive(self) -> None:
        while (msg := self.t.receive(0.0)) is not None:
            self.inbox.append(decode_message(msg.payload))

    def discard(self) -> int:
        """Drop what arrived without decoding it (floods); returns how many messages."""
        n = 0
        while self.t.receive(0.0) is not None:
            n += 1
        return n

    def task(self) -> TrainTask:
        self.receive()
        return [m for m in self.inbox if isinstance(m, TrainTask)][-1]

    def acks(self) -> list[tuple[bool, str]]:
        self.receive()
        return [(m.accepted, m.reason) for m in self.inbox if isinstance(m, Ack)]

    def paces(self) -> list[Pace]:
        self.receive()
        return [m for m in self.inbox if isinstance(m, Pace)]

    def update(self, delta, update_id="u1", **changes) -> Update:
        task = self.task()
        fields = dict(device_id=self.id, round_id=task.round_id, task_id=task.task_id, update_id=update_id,
                      model_id=task.model_id, base_version=task.model_version, num_examples=self.n,
                      payload=encode_dense(delta))
        return Update(**{**fields, **changes})

    def send(self, payload: bytes, on: str | None = None, channel: str = "update") -> None:
        self.t.publish(device_topic(on or self.id, channel), payload)


def one_device_round(model, tmp_path, device_id: str) -> tuple[Fleet, ManualDevice, TrainTask]:
    """A fleet whose only device is a ManualDevice, its round begun and its task in hand."""
    fleet = make_fleet(model, tmp_path, clients_per_round=1)
    dev = ManualDevice(fleet, device_id, 4)
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    return fleet, dev, dev.task()


def copy_params(params):
    return {k: np.array(v, copy=True) for k, v in params.items()}


def fedavg_oracle(old, updates: list[Update]) -> dict[str, np.ndarray]:
    """old + sum_i n_i * delta_i / sum_i n_i, in float64, from the bytes that crossed the wire."""
    total = sum(u.num_examples for u in updates)
    out = {}
    for name, value in old.items():
        acc = np.zeros(value.shape, np.float64)
        for u in updates:
            acc += u.num_examples * decompress_update(decode_tensors(u.payload))[name].astype(np.float64)
        out[name] = value.astype(np.float64) + acc / total
    return out


def assert_params(got, want):
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)


def random_delta(shapes, rng, scale=0.01):
    return {k: (scale * rng.normal(size=s)).astype(np.float32) for k, s in shapes.items()}


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def reframe(frame: bytes, version: int) -> bytes:
    """The same message frame with another schema version and a valid checksum."""
    head = frame[:4] + struct.pack("<H", version) + frame[6:HEADER_SIZE]
    return with_crc(head + frame[HEADER_SIZE:-TRAILER_SIZE])


def nan_payload(delta, value: float = float("nan")) -> bytes:
    """A dense fp32 update frame with one NaN (or Inf), built by patching bytes (CompressedTensor refuses them)."""
    marked = copy_params(delta)
    name = sorted(marked)[0]
    marked[name].flat[0] = 12345.5
    frame = encode_dense(marked)
    at = frame.index(struct.pack("<f", 12345.5))
    body = frame[:at] + struct.pack("<f", value) + frame[at + 4 : -4]
    return with_crc(body)


def bad_shape_payload(delta) -> bytes:
    name = sorted(delta)[0]
    tensors = []
    for n in sorted(delta):
        flat = delta[n].ravel().astype(np.float32)
        shape = (flat.size,) if n == name else delta[n].shape  # right size, wrong shape
        tensors.append(CompressedTensor(n, tuple(int(d) for d in shape), 32, 0.0, None, flat))
    assert tuple(tensors[0].shape) != delta[name].shape
    return encode_tensors(tensors)


def out_of_range_index_payload(delta) -> bytes:
    """A top-k sparse frame whose last index points past its tensor (CompressedTensor refuses
    that, so the index is patched into valid bytes with a fresh CRC)."""
    tensors = []
    for n in sorted(delta):
        flat = delta[n].ravel().astype(np.float32)
        keep = np.arange(0, flat.size, 2, dtype=np.uint32)
        tensors.append(CompressedTensor(n, tuple(int(d) for d in delta[n].shape), 32, 0.0, keep, flat[keep]))
    frame = encode_tensors(tensors)
    # Indices 0, 2, 4, ... travel as gap varints 0, 1, 1, ...: the last gap becomes 127, which
    # puts the last index about 126 past the end of the tensor.
    gaps = b"\x00" + b"\x01" * (tensors[0].indices.size - 1)
    at = frame.index(gaps) + len(gaps) - 1
    body = frame[:at] + b"\x7f" + frame[at + 1 : -4]
    return with_crc(body)


def decoded(update: Update):
    return decompress_update(decode_tensors(update.payload))


def pin_noise_keys(coordinator) -> None:
    """Each DP round's noise key, which its cohort and central noise are drawn from (dp/budget.py:
    128 bits from the OS per round), as a function of the round instead, for a test whose
    assertions depend on the draw (an empty Poisson draw, two cohort sizes, a noised count).
    Call it again after a restart: the new Coordinator builds a new budget with the OS's keys."""
    coordinator.privacy.noise_key = lambda round_id: f"{round_id + 0x5eed:032x}"


def noise_entropy(key: str, seed: int, round_id: int) -> list[int]:
    """What a DP round's central noise is drawn from: its plan's noise key (32 hex digits, from the
    OS; the open round's plan holds it, a closed round's and the ledger do not), the config's seed
    and the round; a plan without a key (the simulator's): (seed, round)."""
    return [int(key, 16), seed, round_id] if key else [seed, round_id]


def refuse_first_commit(store) -> list[int]:
    """Make `store.commit_round` raise OSError (a full disk) on its first call and commit from
    the second on; returns the list that grows by one per call."""
    commit, tries = store.commit_round, []

    def full_disk_once(*args, **kwargs):
        tries.append(1)
        if len(tries) == 1:
            raise OSError("no space left on device")
        return commit(*args, **kwargs)

    store.commit_round = full_disk_once
    return tries
