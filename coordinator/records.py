"""The coordinator's bookkeeping values: known devices, the open round, closed-round records.

The live path and the restart replay (restart.py) both add updates through `OpenRound.add`,
so a round rebuilt from the store holds a bit-identical aggregator (the deltas) and
control mean (SCAFFOLD's control-variate deltas).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import CompressionSpec, RoundModel, TaskHyper
from fedge.edge_runtime.kernel.round_model import split_round_model
from fedge.edge_runtime.kernel.update_codec import encode_dense

from .admission import Accepted
from .aggregate import Aggregator, AggregatorContext, UpdateMeta, WeightedMean, make_aggregator
from .config import CoordinatorConfig
from .dp.round import DpMean, RoundPlan, noise_rng
from .rounds import Replied, RoundMachine, on_event
from .strategies import AggregateInput, ServerState, Strategy
from .validation import RoundContext
from .weights import update_weight


@dataclass
class DeviceRecord:
    device_id: str
    last_seen: float  # clock seconds
    eligible: bool = True
    reason: str = ""
    num_examples: int = 0
    parked: str = ""  # a permanent decline reason (backoff.py): not selected until it checks in anew
    checkin: str | None = None  # backoff.fingerprint of its last CheckIn: does a new one say something new?
    refresh_at: float = 0.0  # clock seconds when its store row's last_seen_wall is due a refresh (registry.py)


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
    # stop or a restart are in no record; fedge_received_bytes_total counts every byte.
    bytes_up: int
    bytes_up_dense: int
    bytes_down: int
    seconds: float
    # Mean of the devices' reported training loss (Update.metrics["loss"]) over the round's
    # accepted updates, each with its update weight (weights.py: examples, or 1 each); None when
    # none reported one, or under privacy (withheld: dp/config.py, release_unnoised_metrics). A
    # round resumed after a restart counts only the updates accepted since (the store keeps no metrics).
    train_loss: float | None = None


@dataclass
class OpenRound:
    machine: RoundMachine  # replaced by rounds.on_event at every event
    ctx: RoundContext
    aggregator: Aggregator  # the deltas ([coordinator] aggregator)
    started: float  # clock seconds
    params_bytes: bytes  # the round's global params, encoded once for every task
    hyper: TaskHyper
    correction_bytes: bytes = b""  # the round's TrainTask.correction (SCAFFOLD's c), encoded once
    round_model_sha256: str = ""  # tasks name the published RoundModel by this; "" = params inline
    loss_sum: float = 0.0  # sum of weight * reported loss (the update's aggregation weight: update_weight)
    loss_weight: float = 0.0  # sum of those weights over updates that reported a finite loss

    @property
    def train_loss(self) -> float | None:
        """None when none was reported, or under privacy (withhold_loss: PrivacyConfig.withholds_metrics)."""
        return self.loss_sum / self.loss_weight if self.loss_weight > 0 and not self.withhold_loss else None
    model_parts: tuple = ()  # encoded ModelParts of the round's RoundModel, published retained
    # Δc_i, each with weight 1: SCAFFOLD's c moves by their plain mean whatever combines the deltas.
    control: WeightedMean = field(default_factory=WeightedMean)
    bytes_up: int = 0
    bytes_up_dense: int = 0
    bytes_down: int = 0
    seen: dict = field(default_factory=dict)  # (device, round, update_id) -> payload sha256
    events: int = 0  # accepted updates + declines so far; the next one's seq in the store
    task_sent: dict = field(default_factory=dict)  # device -> clock seconds its task last left
    inline_sent: dict = field(default_factory=dict)  # device -> clock seconds an inline copy last left
    decline_from: set = field(default_factory=set)  # devices whose decline was counted
    privacy: RoundPlan | None = None  # a DP round's plan (the aggregator is then a DpMean)
    # the tasks' CompressionSpec when not the config's (DP: clip_norm = the round's S; norm_bound: its clip bound)
    compression: object = None
    # the charge is in the ledger already: a secure round's unmasking began (secagg/shell.py, _release)
    charged: bool = False
    # an unmask answer was accepted: charged at the close if the early write (charged) failed
    unmasking: bool = False
    withhold_loss: bool = False  # the devices' loss is unnoised: kept out of the record (train_loss)

    def charge(self) -> dict | None:
        """The privacy charge to commit with the round: its plan once the noised aggregate was
        computed (even if the model guard then refuses it), or once any update of it was accepted
        (committed or not: whether a round reaches its quorum can hang on one device's update, a
        NaN one refused, and an abandoned round shows), else None. A Poisson-sampled round is
        charged however it ends: whether it reaches its quorum depends on how many devices the
        draw included, which one device's presence changes. A restart replays the accepted
        updates, so the rule holds for a resumed round, which the ledger's key charges once. A
        secure round is charged when its unmasking begins, before its close (`charged`: None here),
        or at its close when that early write failed (`unmasking`: a store error on it drops the
        message, not the answer the machine already holds)."""
        # A sharded round's aggregator counts nothing until its seal; its machine's replies are the
        # updates the workers counted (as the leader polled them), which is what decided the round.
        counted = getattr(self.aggregator, "count", 0) > 0 or (
            self.privacy is not None and self.privacy.mechanism == "central" and bool(self.machine.reported))
        released = self.privacy is not None and not self.charged and (
            self.unmasking or getattr(self.aggregator, "released", False) or self.privacy.sampling == "poisson"
            or counted)
        return self.privacy.to_json() if released else None

    def add(self, update: Accepted) -> None:
        """Count one accepted update: aggregator, control mean, seen keys, the machine."""
        weight = update_weight(update.num_examples, self.ctx.max_examples, self.ctx.equal_weights)
        self.aggregator.add(update.delta, UpdateMeta(update.device_id, weight, reported_norm=update.reported_norm))
        loss = update.loss  # admission.reported_loss: None when it could not be a cross-entropy
        if loss is not None:
            self.loss_sum += weight * loss
            self.loss_weight += weight
        if update.control is not None:
            # SCAFFOLD's c moves by the plain sum of Δc_i, not an example-weighted one
            self.control.add(update.control, 1.0)
        self.seen[(update.device_id, self.ctx.round_id, update.update_id)] = update.digest
        self.machine, _ = on_event(self.machine, Replied(update.device_id))

    def aggregate_input(self, population: int) -> AggregateInput:
        """What Strategy.apply consumes; population = N, the devices the coordinator knows."""
        return AggregateInput(self.aggregator.result(), self.aggregator.count, population,
                              self.control.mean() if self.control.count else None)

    def record(self, committed: bool, now: float, aggregated: int | None = None) -> RoundRecord:
        """aggregated: the updates in the committed model (a secure round's survivors, who are
        not all among its last stage's replies); default: the last stage's replies."""
        m = self.machine
        reports = len(m.reported) if aggregated is None else aggregated
        return RoundRecord(round_id=m.round_id, committed=committed, why=m.why, selected=len(m.selected),
                           reports=reports, declines=dict(m.declined), bytes_up=self.bytes_up,
                           bytes_up_dense=self.bytes_up_dense, bytes_down=self.bytes_down,
                           seconds=now - self.started, train_loss=self.train_loss)


def open_round(machine: RoundMachine, tasks: dict[str, str], started: float, *, state: ServerState,
               strategy: Strategy, model_id: str, shapes: dict[str, tuple[int, ...]],
               config: CoordinatorConfig, privacy: RoundPlan | None = None, guard_loss=None) -> OpenRound:
    """The bookkeeping of a round about to begin (or resume): its validation context, the
    params and SCAFFOLD correction encoded once, the model split into parts, a fresh aggregator
    (with a DP plan, the DP-FedAvg mean: coordinator/dp/round.py). `guard_loss`: the guard
    set's loss of the current model moved by a delta, for aggregators that screen (robust/screening.py)."""
    # SCAFFOLD weighs every update 1 whatever `weighting` says (weights.py says why).
    ctx = RoundContext(machine.round_id, model_id, state.version, tasks, shapes, config.norm_bound,
                       strategy.uses_control, config.control_norm_bound, config.max_examples,
                       config.weighting == "equal" or strategy.uses_control)
    plan = strategy.configure(state)
    correction = encode_dense(plan.correction) if plan.correction is not None else b""
    params = encode_dense(state.params)
    sha, parts = "", ()
    if config.model_part_bytes:
        model = RoundModel(ctx.model_id, ctx.model_version, ctx.round_id, params, correction)
        sha, split = split_round_model(model, config.model_part_bytes)
        parts = tuple(encode_message(p) for p in split)
    context = AggregatorContext(machine.round_id, config.seed, config.robust, state.extra, guard_loss)
    aggregator = DpMean(privacy, noise_rng(privacy, context.seed, context.round_id)) if privacy else \
        make_aggregator(config.aggregator, context)
    if privacy:
        compression = replace(config.compression, clip_norm=privacy.clip_norm)
    else:
        compression = _device_clip(config, aggregator)
    return OpenRound(machine, ctx, aggregator, started, params, plan.hyper, correction,
                     round_model_sha256=sha, model_parts=parts, privacy=privacy, compression=compression,
                     withhold_loss=config.privacy.withholds_metrics)


_CLIP_NORM_MAX = next(f for f in fields(CompressionSpec) if f.name == "clip_norm").metadata["range"][1]


def _device_clip(config: CoordinatorConfig, aggregator):
    """The tasks' compression when they ask devices to clip to the round's norm bound
    ([robust.norm] device_clip); else None (the config's compression). Only where:
      * the operator set no compression.clip_norm, and the aggregator knows its bound before the
        round (norm_bound with a history, or an initial_bound);
      * the updates are dense. With top-k the device clips the dense sum before it sparsifies,
        while the bound is a multiple of the norms of what was sent, a fraction of that sum's
        (int8 top-10% runs lost about a point everywhere with it: README, Robust aggregation);
      * multiplier >= 1. The history records what was sent: clipped below the median, every
        round would lower the next round's median, and the bound would shrink towards 0;
      * mode is sync. In async mode an update may land in a later buffer, with another bound;
      * the bound fits the wire (a history of absurd but finite norms must not make every task
        unsendable)."""
    bound = getattr(aggregator, "task_clip", math.inf)
    norm = config.robust.norm
    if (config.compression.clip_norm or not norm.device_clip or config.compression.topk_fraction < 1
            or norm.multiplier < 1 or config.mode != "sync" or not 0 < bound <= _CLIP_NORM_MAX):
        return None
    return replace(config.compression, clip_norm=float(bound))


def count_uplink(rnd: OpenRound | None, late: tuple[int, int], update, size: int,
                 dense_limit: int) -> tuple[int, int]:
    """Count an Update's bytes (and what they would be as dense fp32): everything that crossed
    the uplink counts, accepted or not. With no round open they count toward the next one:
    the returned (bytes, dense bytes) carry them until it begins. The device's dense_bytes is a
    claim: counted up to `dense_limit` (the model's shared params and a control variate as
    fp32), so one Update claiming 2^63 cannot make the round's record say anything."""
    dense = size - len(update.payload) - len(update.control) + min(update.dense_bytes, dense_limit)
    if rnd is None:
        return late[0] + size, late[1] + dense
    rnd.bytes_up += size
    rnd.bytes_up_dense += dense
    return late
