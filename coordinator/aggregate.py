"""How one round's accepted updates combine: the Aggregator seam, its registry, and two
implementations (the streaming weighted mean, and a keep-all base for robust statistics).

An aggregator sits between admission and the server optimizer:

    admit(update) -> Accepted --add(delta, meta)--> Aggregator --result()--> AggregateInput
                                                                             -> Strategy.apply

    class Aggregator(Protocol):
        def add(self, delta: Params, meta: UpdateMeta) -> None   # one accepted update
        def result(self) -> Params                              # the round's combined delta
        count: int                                              # updates added

Restart: an aggregator's state must be a function of the sequence of `add` calls alone (no
clock, no RNG it does not own, no hidden input). The store keeps every accepted update of
the open round until it commits, and a restarted coordinator replays them in acceptance
order into a fresh aggregator, so the rebuilt state is bit-identical to the lost one.

The interface admits, without touching the coordinator:

* the streaming mean (MeanAggregator over WeightedMean, "mean"): O(model) memory;
* a keep-all aggregator (KeepAll): every accepted delta of the round, O(k x model) memory,
  for robust statistics that need them all at once (coordinate-wise median, trimmed mean,
  Krum); register one with `register_aggregator("median", lambda ctx: KeepAll(median_fn))`
  (coordinator/robust registers median, trimmed_mean, krum, centered_clipping, norm_bound);
* a modular integer sum for secure aggregation: `add` takes the masked vector (integers in
  Z_{2^b}, carried as an integer-dtype Params) and adds it mod 2^b into an O(model) sum;
  `result` subtracts the unmasked seeds' contribution (given to it by the unmask stage) and
  maps the field back to floats. It never sees one device's plaintext;
* FedBuff's buffer (coordinator/async_mode, `mode = "async"`): any of these aggregators, fed
  each delta scaled by f(s) = (1 + s)^-a, with `meta.staleness` = s (model versions the update's
  base is behind) and `meta.staleness_weight` = f(s); the coordinator calls `result` when the
  buffer holds K updates instead of at a round deadline. An aggregator with a true
  `weights_staleness` attribute is given the raw delta instead and applies f(s) itself: the
  robust rules (coordinator/robust) and DP's DpMean, so that the norm bound (or the clip S) clips
  the raw delta and weights the clipped delta after, clip(Δ) f(s), as FedBuff does.

Pick one with `[coordinator] aggregator = "mean"`; `make_aggregator(name, context)` builds a
fresh one per round. The factory gets an AggregatorContext: the round id and seed (for an RNG
it owns, so a replay after a restart draws the same numbers), the coordinator's `[robust]`
settings, and the committed model's ServerState.extra, where an aggregator that learns across
rounds (a running norm history, the last aggregate) finds what it left there. It leaves it
through an optional `carry() -> dict[group, dict[str, ndarray]]`, which the coordinator merges
into the new ServerState.extra before the commit, so the store commits it with the model.
The server optimizer (FedAvg, FedAdam, ...) stays in coordinator/strategies: it
consumes the aggregate and knows nothing of how it was formed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from fedge.edge_runtime.kernel.errors import ConfigError

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class UpdateMeta:
    """What an aggregator may know about an update besides its delta."""

    device_id: str
    weight: float  # the FedAvg weight: the device's num_examples
    staleness: int = 0  # model versions between the update's base and the model it moves (0 = sync)
    reported_norm: float | None = None  # the device's delta norm before its clip, as it says (DP's adaptive clip)
    staleness_weight: float = 1.0  # async: f(s) in (0, 1], applied by the coordinator or the aggregator (above)


@dataclass(frozen=True)
class AggregatorContext:
    """What a factory may use to build one round's aggregator (module docstring)."""

    round_id: int = 0
    seed: int = 0
    settings: object = None  # CoordinatorConfig.robust (a RobustConfig); opaque to this module
    extra: dict = field(default_factory=dict)  # the committed ServerState.extra
    # With a guard set ([coordinator] guard_set): its loss for the current model moved by a delta
    # (a params dict of the shared tensors), for rules that screen updates (robust/screening.py).
    guard_loss: Callable[[Params], float] | None = None

    def rng(self) -> np.random.Generator:
        """Drawn from (seed, round): a resumed round replays into the same draws."""
        return np.random.default_rng([self.seed, self.round_id])


@runtime_checkable
class Aggregator(Protocol):
    count: int  # updates added so far

    def add(self, delta: Params, meta: UpdateMeta) -> None: ...

    def result(self) -> Params: ...


class WeightedMean:
    """Streaming weighted mean: a running sum of weight * tensor in float64, so memory stays
    O(model) however many clients report; `mean()` divides by the total weight."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self._scratch: dict[str, np.ndarray] = {}  # one float64 buffer per tensor, reused by add
        self.total_weight = 0.0
        self.count = 0

    def add(self, tensors: Params, weight: float) -> None:
        if not weight > 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        for name, value in tensors.items():
            acc = self.sums.get(name)
            if acc is None:
                # asarray: a 0-d product is a numpy scalar, and `+=` on it would not update the dict.
                self.sums[name] = np.asarray(np.asarray(value, np.float64) * weight)
                self._scratch[name] = np.empty_like(self.sums[name])
            else:
                # float64(value) * weight into a kept buffer, then added: the same arithmetic as
                # acc += float64(value) * weight without a fresh array per update.
                scratch = self._scratch[name]
                np.copyto(scratch, value)  # exact: float32 -> float64
                scratch *= weight
                acc += scratch
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Params:
        if self.count == 0:
            raise ValueError("no contributions to average")
        return {k: (v / self.total_weight).astype(np.float32) for k, v in self.sums.items()}


class MeanAggregator:
    """The Aggregator "mean": FedAvg's example-weighted mean, streamed (WeightedMean)."""

    def __init__(self) -> None:
        self.mean = WeightedMean()

    @property
    def count(self) -> int:
        return self.mean.count

    def add(self, delta: Params, meta: UpdateMeta) -> None:
        self.mean.add(delta, float(meta.weight))

    def result(self) -> Params:
        return self.mean.mean()


class KeepAll:
    """Keeps every accepted delta of the round, then reduces them with `combine`.

    Memory is O(k x model) for k accepted updates: the price of statistics that need every
    update at once (median, trimmed mean, Krum). `combine(stack, weights)` gets, per tensor,
    the deltas stacked as float64 (k, *shape) in acceptance order and the weights (k,), and
    returns one array of the tensor's shape; the result is cast to float32 like the mean's.
    """

    def __init__(self, combine: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.combine = combine
        self.deltas: list[Params] = []
        self.metas: list[UpdateMeta] = []

    @property
    def count(self) -> int:
        return len(self.deltas)

    def add(self, delta: Params, meta: UpdateMeta) -> None:
        if not meta.weight > 0:
            raise ValueError(f"weight must be > 0, got {meta.weight}")
        self.deltas.append({k: np.array(v, np.float64) for k, v in delta.items()})
        self.metas.append(meta)

    def result(self) -> Params:
        if not self.deltas:
            raise ValueError("no contributions to combine")
        weights = np.array([m.weight for m in self.metas], np.float64)
        return {name: np.asarray(self.combine(np.stack([d[name] for d in self.deltas]), weights), np.float32)
                for name in self.deltas[0]}


AGGREGATORS: dict[str, Callable[[AggregatorContext], Aggregator]] = {"mean": lambda _ctx: MeanAggregator()}


def register_aggregator(name: str, factory: Callable[[AggregatorContext], Aggregator]) -> None:
    """Make `aggregator = name` available in the coordinator config. A module that registers
    must be imported before the config is loaded (its package __init__ is a good place)."""
    if name in AGGREGATORS and AGGREGATORS[name] is not factory:
        raise ValueError(f"aggregator {name!r} is already registered")
    AGGREGATORS[name] = factory


def make_aggregator(name: str, context: AggregatorContext | None = None) -> Aggregator:
    """A fresh aggregator for one round."""
    factory = AGGREGATORS.get(name)
    if factory is None:
        raise ConfigError(f"aggregator {name!r}: choose one of {sorted(AGGREGATORS)}")
    return factory(context if context is not None else AggregatorContext())


def weighted_mean_naive(updates: list[Params], weights: list[float]) -> Params:
    """The textbook formula, for tests: sum_i w_i x_i / sum_i w_i."""
    total = float(sum(weights))
    return {k: sum(w * u[k].astype(np.float64) for u, w in zip(updates, weights)) / total for k in updates[0]}
