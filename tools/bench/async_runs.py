"""Sync FedAvg and FedBuff on one virtual clock (tools/bench/virtual_fleet.py), same devices,
same data, same seed: the two drivers behind `fedge bench async`.

What is real here: the coordinator's pure parts. Sync draws its cohort with
coordinator.sampling (over-selection included) and steps with the FedAvg strategy; async
runs the buffer's transition table (coordinator/async_mode/machine.py: dispatch to the
concurrency limit, staleness, stale_update, flush at K) and FedBuff's step
(async_mode/staleness.py), then the same strategy. Bytes are measured wire sizes: the
encoded TrainTask and Update frames of this model. The device's training is real too: every
task runs DeviceRuntime.handle_task on the portable ONNX Runtime backend and the coordinator's
decoder reads its Update frame (tools/bench/device_task.py). What is simulated: time (the
virtual fleet); there is no transport, the frames are handed over in memory.

Sync round: wait, a minute at a time, for a quorum (ceil(clients_per_round / 2)) of available
devices; a simulated day without one (or the longest period of a profile given by path, where
that is longer, up to a week) is a ConfigError, since the traces repeat and it would wait for ever; ask
selection_size(clients_per_round, over_selection) of them; a device whose download + compute
passes the deadline (the fleet's p-th percentile task time) stops and sends nothing; the round
closes at the clients_per_round-th report or the deadline, whichever comes first (an upload may
end past the deadline), and commits with at least the quorum. Reports that finish after the
close still cross the uplink (and are counted). Async: every task's deadline is
async_deadline_factor x the sync deadline; an expired or lost task frees its slot.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.async_mode.machine import (
    Admit,
    Arrived,
    AsyncMachine,
    Buffered,
    Dispatch,
    Dispatched,
    Flight,
    Flush,
    Flushed,
    Tick,
    on_event,
)
from fedge.coordinator.async_mode.staleness import buffered_mean
from fedge.coordinator.sampling import sample_devices, selection_size
from fedge.coordinator.strategies import AggregateInput, make_strategy
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import TaskHyper

from .device_task import DeviceTask as Task
from .virtual_fleet import VirtualFleet

WAIT_DAY_STEPS = 1440  # one-minute steps in a day: the shipped profiles' periods (300 s to a day) divide it
WAIT_MAX_STEPS = 7 * WAIT_DAY_STEPS  # a week: a profile's period of 1e9 s once meant 16.7 million minutes' scan


@dataclass(frozen=True)
class RunConfig:
    clients_per_round: int = 100
    over_selection: float = 1.3
    deadline_quantile: float = 0.9
    rounds: int = 60  # sync rounds; async runs for the same simulated time
    concurrency: int = 100
    buffer_size: int = 10
    max_staleness: int = AsyncConfig().max_staleness  # the coordinator's defaults: 20, (1 + s)^-1/2
    staleness_exponent: float = AsyncConfig().exponent
    async_deadline_factor: float = 4.0
    epochs: int = 5  # a device holds ~4 examples (MNIST-5k over 1,000): one step an epoch at batch 10
    batch_size: int = 10
    lr: float = 0.1  # 0.3 trips the divergence guard on such tiny devices (loss 1.2 -> 13 in two steps)
    seed: int = 0


def _ids(devices) -> list[str]:
    return [f"d{d:05d}" for d in devices]


def _wait_for_quorum(fleet: VirtualFleet, now: float, quorum: int, wanted: int) -> tuple[float, list[int]]:
    """(the first minute from `now` with at least `quorum` devices available, those devices), as
    the loop waits. Every profile's trace repeats, so a day (or the longest period of a profile
    given by path, if longer, up to a week: WAIT_MAX_STEPS) without a quorum is never: ConfigError."""
    longest = max((p.trace.period_s or 0.0 for p in fleet.profiles), default=0.0)
    steps = min(max(WAIT_DAY_STEPS, math.ceil(longest / 60.0)), WAIT_MAX_STEPS)
    for _ in range(steps + 1):
        candidates = [d for d in range(len(fleet)) if fleet.available(d, now)]
        if len(candidates) >= quorum:
            return now, candidates
        now += 60.0
    span = "a simulated day" if steps == WAIT_DAY_STEPS else f"{steps / WAIT_DAY_STEPS:g} simulated days"
    raise ConfigError(f"no minute of {span} has the sync round's quorum of {quorum} ({wanted} a round) "
                      f"available among {len(fleet)} devices; use more devices or fewer a round")


def run_sync(task: Task, fleet: VirtualFleet, cfg: RunConfig) -> dict:
    strategy = make_strategy("fedavg", TaskHyper())
    state = strategy.init(task.init)
    deadline = float(np.quantile(fleet.task_seconds(cfg.epochs, task.bytes_down, task.bytes_up), cfg.deadline_quantile))
    rng = np.random.default_rng([cfg.seed, 1])
    quorum = max(1, -(-cfg.clients_per_round // 2))
    now, bytes_up, bytes_down, curve, abandoned = 0.0, 0, 0, [(0.0, task.accuracy(state.params), 0)], 0
    for round_id in range(1, cfg.rounds + 1):
        now, candidates = _wait_for_quorum(fleet, now, quorum, cfg.clients_per_round)
        asked = selection_size(cfg.clients_per_round, cfg.over_selection, len(candidates))
        chosen = [int(d[1:]) for d in sample_devices(_ids(candidates), asked, cfg.seed, round_id)]
        bytes_down += task.bytes_down * len(chosen)
        finishes = []
        for d in chosen:
            down, compute, up = fleet.times(d, cfg.epochs, task.bytes_down, task.bytes_up)
            if fleet.lost(d, now, down + compute + up, rng) or down + compute > deadline:
                continue  # silent, or stopped by its deadline: nothing crosses the uplink
            finishes.append((now + down + compute + up, d))
        finishes.sort()
        full = len(finishes) >= cfg.clients_per_round
        close = min(finishes[cfg.clients_per_round - 1][0], now + deadline) if full else now + deadline
        reports = [d for t, d in finishes if t <= close][:cfg.clients_per_round]
        bytes_up += task.bytes_up * len(finishes)  # late reports are sent, then refused
        trained = [(task.train(state.params, d, cfg, round_id), d) for d in reports] if len(reports) >= quorum else []
        trained = [(delta, d) for delta, d in trained if delta is not None]  # a Decline (diverged) adds nothing
        if len(trained) >= quorum:
            deltas = [delta for delta, _ in trained]
            weights = [float(len(task.clients[d].y_train)) for _, d in trained]
            mean = buffered_mean(deltas, weights, [0] * len(deltas), 0.0)  # staleness 0: FedAvg's mean
            state = strategy.apply(state, AggregateInput({k: v.astype(np.float32) for k, v in mean.items()},
                                                         len(trained), len(fleet)))
        else:
            abandoned += 1
        now = close
        curve.append((now, task.accuracy(state.params), bytes_up))
    return {"curve": curve, "bytes_up_total": bytes_up, "bytes_down_total": bytes_down, "deadline_seconds": deadline,
            "rounds": cfg.rounds, "abandoned_rounds": abandoned, "final_accuracy": curve[-1][1]}


def run_async(task: Task, fleet: VirtualFleet, cfg: RunConfig, until: float, sync_deadline: float) -> dict:
    strategy = make_strategy("fedavg", TaskHyper())
    state = strategy.init(task.init)
    machine = AsyncMachine(0, cfg.buffer_size, cfg.concurrency, cfg.max_staleness)
    rng = np.random.default_rng([cfg.seed, 2])
    task_deadline = cfg.async_deadline_factor * sync_deadline
    events: list = []  # (time, seq, device or -1 for a wake-up, task id)
    # task id -> the delta it will report. By task, not device: a device whose upload ended past its
    # deadline may hold a new task before the old one lands; keyed by device, the old arrival took
    # the new task's delta and was admitted as it, at the old task's time.
    pending: dict[str, dict] = {}
    buffer: list = []  # (delta, weight, staleness)
    now, seq, draws, bytes_up, bytes_down, wake = 0.0, 0, 0, 0, 0, 0.0
    curve, staleness, stale = [(0.0, task.accuracy(state.params), 0)], [], 0
    while now < until:
        machine, actions = on_event(machine, Tick(now))
        for action in actions:
            if isinstance(action, Dispatch):
                busy = {int(dev[1:]) for dev, _ in machine.flights}
                idle = [d for d in range(len(fleet)) if d not in busy and fleet.available(d, now)]
                draws += 1
                for d in (int(x[1:]) for x in sample_devices(_ids(idle), min(action.count, len(idle)), cfg.seed,
                                                               draws)):
                    tid = f"{draws}-{d}"
                    machine, _ = on_event(machine, Dispatched(_ids([d])[0], Flight(tid, 0, machine.version,
                                                                                    now + task_deadline)))
                    bytes_down += task.bytes_down
                    down, compute, up = fleet.times(d, cfg.epochs, task.bytes_down, task.bytes_up)
                    if fleet.lost(d, now, down + compute + up, rng) or down + compute > task_deadline:
                        continue  # its slot frees at the deadline (Expire)
                    delta = task.train(state.params, d, cfg, draws)  # trained on today's model
                    if delta is None:
                        continue  # declined (diverged): counted like a lost task, its slot frees at the deadline
                    pending[tid] = delta
                    seq += 1
                    heapq.heappush(events, (now + down + compute + up, seq, d, tid))
        if wake <= now:  # look again for free slots and expired tasks within a minute
            wake, seq = now + 60.0, seq + 1
            heapq.heappush(events, (wake, seq, -1, ""))
        now, _, d, tid = heapq.heappop(events)
        if d < 0:
            continue
        delta = pending.pop(tid)
        bytes_up += task.bytes_up
        machine, actions = on_event(machine, Arrived(_ids([d])[0], tid))
        if not isinstance(actions[0], Admit):
            stale += 1  # stale_update (or expired first): it crossed the uplink, then was refused
            continue
        staleness.append(actions[0].staleness)
        buffer.append((delta, float(len(task.clients[d].y_train)), actions[0].staleness))
        machine, actions = on_event(machine, Buffered(_ids([d])[0]))
        if any(isinstance(a, Flush) for a in actions):
            mean = buffered_mean(*map(list, zip(*buffer)), cfg.staleness_exponent)
            state = strategy.apply(state, AggregateInput({k: v.astype(np.float32) for k, v in mean.items()},
                                                         len(buffer), len(fleet)))
            machine, _ = on_event(machine, Flushed())
            buffer = []
            curve.append((now, task.accuracy(state.params), bytes_up))
    return {"curve": curve, "bytes_up_total": bytes_up, "bytes_down_total": bytes_down, "versions": machine.version,
            "stale_rejected": stale, "task_deadline_seconds": task_deadline,
            "staleness": {"mean": float(np.mean(staleness)) if staleness else 0.0,
                          "p90": float(np.quantile(staleness, 0.9)) if staleness else 0.0,
                          "max": int(max(staleness, default=0))},
            "final_accuracy": curve[-1][1]}


def time_to(curve, target: float) -> tuple[float | None, int | None]:
    """(simulated seconds, uplink bytes) when the accuracy first reached `target`; None if never."""
    for t, acc, up in curve:
        if acc >= target:
            return t, up
    return None, None
