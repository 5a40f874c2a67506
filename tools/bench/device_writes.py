"""Durable (fsync'd) writes per device task, counted by edge_runtime.kernel.files.DURABLE_WRITES.

Two devices, each the real DeviceAgent and journal over the in-memory broker:

  training  the simulator's devices (DeviceRuntime: ONNX training, int8 updates with error
            feedback, the staged state of journal.py), every device in every round; rounds
            after the first are counted, so the one-time model download is not
  replay    `fedge bench mqtt`'s device, which answers every task with a fixed update: what
            the journal alone costs (the seen-task record, the kept update, the Ack)

A round's window runs from one round's close to the next, so it holds every device's task of
that round and the Acks of the one before: one task's writes per device either way.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.evaluation import EvalConfig
from fedge.coordinator.server import Coordinator
from fedge.coordinator.strategies import strategy_from_config
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.kernel.compress import compress_update
from fedge.edge_runtime.kernel.files import DURABLE_WRITES, atomic_write_bytes
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE
from fedge.edge_runtime.kernel.protocol import CompressionSpec
from fedge.edge_runtime.kernel.transport.memory import InMemoryBroker
from fedge.edge_runtime.kernel.update_codec import dense_fp32_bytes, encode_tensors

from .ingest_drain import bench_model


def _per_task(before: Counter, after: Counter, tasks: int) -> dict:
    by_kind = {kind: (after[kind] - before[kind]) / tasks for kind in sorted(after) if after[kind] > before[kind]}
    return {"per_task": sum(by_kind.values()), "by_file": by_kind, "tasks": tasks}


def training(devices: int = 4, rounds: int = 4, seed: int = 0) -> dict:
    """Durable writes per task of the simulator's training devices (digits, int8 updates)."""
    from fedge.tools.simulate.config import sim_config
    from fedge.tools.simulate.fleet import run_simulation

    snaps: list[tuple[dict, Counter]] = []
    with tempfile.TemporaryDirectory(prefix="fedge-bench-writes-") as tmp:
        cfg = sim_config(dataset="digits", devices=devices, rounds=rounds, clients_per_round=devices, epochs=1,
                         baselines=(), seed=seed, out_dir=tmp)
        run_simulation(cfg, on_round=lambda row: snaps.append((row, DURABLE_WRITES.snapshot())))
    counted = [row for row, _ in snaps[1:]]
    if len(snaps) < 2 or any(not row["committed"] or row["participants"] != devices for row in counted):
        raise RuntimeError(f"durable writes: every round after the first must commit with all {devices} devices")
    return _per_task(snaps[0][1], snaps[-1][1], devices * (rounds - 1))


def replay(devices: int = 4, rounds: int = 4, params: int = 1024) -> dict:
    """Durable writes per task of `fedge bench mqtt`'s replaying device."""
    from .mqtt import ReplayRuntime

    manifest, initial = bench_model(params)
    rng = np.random.default_rng(0)
    tensors, _, _ = compress_update({"w": rng.normal(0, 0.01, params).astype(np.float32)}, None,
                                    CompressionSpec(quant_bits=8), rng)
    payload, dense = encode_tensors(tensors), dense_fp32_bytes({"w": (params,)})
    cfg = CoordinatorConfig(clients_per_round=devices, over_selection=1.0, min_reports=devices, aggregator="mean",
                            evaluation=EvalConfig(every_rounds=0))  # a replaying device cannot evaluate
    broker = InMemoryBroker()
    with tempfile.TemporaryDirectory(prefix="fedge-bench-writes-") as tmp:
        atomic_write_bytes(Path(tmp) / MANIFEST_FILE, manifest.to_json().encode())
        coordinator = Coordinator(broker.connect("coordinator"), strategy_from_config(cfg), manifest, initial, cfg)
        coordinator.start()
        agents = [DeviceAgent(ReplayRuntime(f"dev-{i}", Path(tmp), payload, dense, manifest.model_id),
                              broker.connect(f"dev-{i}"), checkin_s=3600, republish_s=3600) for i in range(devices)]
        for agent in agents:
            agent.start()
        _settle(coordinator, agents)
        snaps = []
        for _ in range(rounds):
            if not coordinator.begin_round():
                raise RuntimeError("durable writes (replay): the round did not begin")
            _settle(coordinator, agents)
            record = coordinator.tick()
            _settle(coordinator, agents)  # the Acks
            if record is None or not record.committed or record.reports != devices:
                raise RuntimeError(f"durable writes (replay): round not committed with {devices} reports: {record}")
            snaps.append(DURABLE_WRITES.snapshot())
    return _per_task(snaps[0], snaps[-1], devices * (rounds - 1))


def _settle(coordinator: Coordinator, agents: list[DeviceAgent]) -> None:
    """Deliver messages until nobody has anything left to handle."""
    busy = True
    while busy:
        busy = False
        while coordinator.pump(0.0):
            busy = True
        for agent in agents:
            while agent.poll(0.0):
                busy = True
