"""The coordinator's bookkeeping values: known devices, the open round, closed-round records.

The live path and the restart replay (`resume`) both add updates through `count_update`,
so a round rebuilt from the store holds bit-identical accumulators (the deltas and, in a
SCAFFOLD round, the control-variate deltas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.protocol import TaskHyper
from fedge.edge_runtime.kernel.update_codec import decode_tensors

from .aggregate import WeightedMean
from .rounds import RoundMachine
from .store import StoredRound, StoredUpdate
from .validation import RoundContext


@dataclass
class DeviceRecord:
    device_id: str
    last_seen: float  # clock seconds
    eligible: bool = True
    reason: str = ""
    num_examples: int = 0


@dataclass
class RoundRecord:
    round_id: int
    committed: bool
    why: str
    selected: int
    reports: int
    declines: dict[str, str]
    # Uplink bytes as received while the round was open, plus those that arrived after the
    # previous round closed (late answers to it). Late answers to the last round before a
    # stop or a restart are in no record; fedge_bytes_up_total counts every byte.
    bytes_up: int
    bytes_up_dense: int
    bytes_down: int
    seconds: float
    # Example-weighted mean of the devices' reported training loss (Update.metrics["loss"]) over
    # the round's accepted updates; None when none reported one. A round resumed after a
    # restart counts only the updates accepted since (the store keeps no metrics).
    train_loss: float | None = None


@dataclass
class OpenRound:
    machine: RoundMachine
    ctx: RoundContext
    accumulator: WeightedMean
    started: float  # clock seconds
    params_bytes: bytes  # the round's global params, encoded once for every task
    hyper: TaskHyper
    correction_bytes: bytes = b""  # the round's TrainTask.correction (SCAFFOLD's c), encoded once
    round_model_sha256: str = ""  # tasks name the published RoundModel by this; "" = params inline
    loss_sum: float = 0.0  # sum of num_examples * reported loss
    loss_weight: float = 0.0  # sum of num_examples over updates that reported a finite loss

    @property
    def train_loss(self) -> float | None:
        return self.loss_sum / self.loss_weight if self.loss_weight > 0 else None
    model_parts: tuple = ()  # encoded ModelParts of the round's RoundModel, published retained
    control: WeightedMean = field(default_factory=WeightedMean)  # Δc_i, each with weight 1 (SCAFFOLD)
    bytes_up: int = 0
    bytes_up_dense: int = 0
    bytes_down: int = 0
    seen: dict = field(default_factory=dict)  # (device, round, update_id) -> payload sha256
    events: int = 0  # accepted updates + declines so far; the next one's seq in the store
    task_sent: dict = field(default_factory=dict)  # device -> clock seconds its task last left
    inline_sent: dict = field(default_factory=dict)  # device -> clock seconds an inline copy last left
    decline_from: set = field(default_factory=set)  # devices whose decline was counted


def count_update(rnd: OpenRound, device_id: str, update_id: str, digest: str, delta: dict[str, np.ndarray],
                 num_examples: int, control: dict[str, np.ndarray] | None = None, loss: float | None = None) -> None:
    """Add one accepted update (and its control-variate delta, if any) to the round."""
    rnd.accumulator.add(delta, float(num_examples))
    # The loss is the device's word, not checked against anything: a non-finite or absurd
    # value is left out rather than allowed to turn the round's mean into NaN or 1e300.
    if isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss) and abs(loss) < 1e12:
        rnd.loss_sum += float(num_examples) * float(loss)
        rnd.loss_weight += float(num_examples)
    if control is not None:
        rnd.control.add(control, 1.0)  # SCAFFOLD's c moves by the plain sum of Δc_i, not an example-weighted one
    rnd.seen[(device_id, rnd.ctx.round_id, update_id)] = digest
    rnd.machine.on_report(device_id)


def resume(stored: StoredRound, now: float, wall: float,
           make_round: Callable[[RoundMachine, dict[str, str], float], OpenRound]) -> OpenRound:
    """Rebuild an open round from the store: its machine with the deadline carried over in wall
    time, then every stored event replayed in acceptance order, so the accumulator is
    bit-identical to the one the stopped process held."""
    machine = RoundMachine(stored.round_id, stored.selected, stored.target, stored.quorum,
                           now + (stored.deadline_wall - wall))
    rnd = make_round(machine, stored.tasks, now - (wall - stored.started_wall))
    for event in stored.events:
        if isinstance(event, StoredUpdate):
            delta = decompress_update(decode_tensors(event.payload))  # what check_contents returned
            control = decompress_update(decode_tensors(event.control)) if event.control else None  # check_control's
            count_update(rnd, event.device_id, event.update_id, event.digest, delta, event.num_examples, control)
        else:
            rnd.decline_from.add(event.device_id)
            rnd.machine.on_decline(event.device_id, event.reason)
        rnd.events = event.seq + 1
    return rnd
