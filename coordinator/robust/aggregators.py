"""The robust rules as round aggregators, chosen by name.

    agg = make_aggregator(name, cfg, state, rng)    one per round (or by name through the
                                                    coordinator's registry: aggregate.make_aggregator)
    agg.add(delta, weight_or_meta)                  as each accepted update arrives (a float
                                                    weight, or anything with a .weight)
    agg.mean() / agg.result()                       at close: the params dict to apply (float32)
    state = advance(state, agg, cfg)                after the round commits
    agg.carry()                                     the same, as the ServerState.extra group

`state` (RobustState) carries what a rule learns across rounds: the running history of update
norms (the norm bound's median; centered clipping's default radius) and the last aggregate
(centered clipping's starting center). It is a frozen value, like the strategies' state, and
travels in ServerState.extra[EXTRA_KEY], so the store commits it with the model and a restart
(which replays the open round into a fresh aggregator) rebuilds the same bound and center.

    name               keeps        rule
    mean               O(model)     weighted mean, nothing clipped (FedAvg: aggregate.WeightedMean)
    norm_bound         O(model)     clip to multiplier x running median norm, then weighted mean;
                       O(k model)   with a guard set ([coordinator] guard_set) and [robust.screen]
                                    enabled (the default), the updates that make the mean worse
                                    on the guard set are left out first (screening.py); with
                                    [robust.sign] gap > 0 (off by default), a sign-statistics
                                    minority far from the rest (sign_split.py); both: screened.py
    median             O(k model)   coordinate-wise median
    trimmed_mean       O(k model)   coordinate-wise trimmed mean, beta = byzantine_fraction
    krum               O(k model)   multi-Krum, f = floor(byzantine_fraction * inputs) (at most
                                    (inputs - 3) // 2; median below 3 inputs), m = inputs - f
    centered_clipping  O(k model)   from the last aggregate, radius tau (0: the running median norm)

bucket_size > 1 puts any keep-all rule behind bucketing (its inputs become the buckets).
The keep-all rules ignore claimed weights, as their papers do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..aggregate import AggregatorContext, WeightedMean, register_aggregator
from ..limits import MAX_CC_ITERATIONS
from .bucketing import bucketing
from .clipping import centered_clipping
from .coordinate import coordinate_median, trimmed_mean
from .errors import BadRobustParameter, RobustError
from .flat import Params, flatten, unflatten
from .krum import multi_krum
from .norm_bound import NOTED_CUT, ClippedMean, NormBoundConfig, NormHistory, claim_allowance, round_limits
from .screening import ScreenConfig
from .sign_split import SignSplitConfig

KEEP_ALL = ("median", "trimmed_mean", "krum", "centered_clipping")
AGGREGATORS = ("mean", "norm_bound", *KEEP_ALL)


@dataclass(frozen=True)
class RobustConfig:
    byzantine_fraction: float = 0.2  # trimmed mean's beta; Krum's f = floor(this * inputs)
    cc_tau: float = 0.0  # centered clipping radius; 0 = the running median update norm
    cc_iterations: int = 3
    bucket_size: int = 0  # > 1: bucket the updates before a keep-all rule; 0 or 1 = off
    norm: NormBoundConfig = field(default_factory=NormBoundConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)  # norm_bound with a guard set (screening.py)
    sign: SignSplitConfig = field(default_factory=SignSplitConfig)  # norm_bound's gated sign split (off)

    def __post_init__(self) -> None:
        if not 0 <= self.byzantine_fraction < 0.5:
            raise BadRobustParameter("byzantine_fraction must be in [0, 0.5)")
        if not (self.cc_tau >= 0 and math.isfinite(self.cc_tau)):
            raise BadRobustParameter("cc_tau must be >= 0 (0 = running median norm)")
        if not 1 <= self.cc_iterations <= MAX_CC_ITERATIONS:
            raise BadRobustParameter(f"cc_iterations must be in [1, {MAX_CC_ITERATIONS}]")
        if self.bucket_size < 0:
            raise BadRobustParameter("bucket_size must be >= 0 (0 = no bucketing)")


EXTRA_KEY = "robust"  # the ServerState.extra group that carries RobustState through commits and restarts


@dataclass(frozen=True)
class RobustState:
    history: NormHistory = NormHistory()
    center: np.ndarray | None = None  # (d,) float64: the last committed aggregate
    claims: NormHistory = NormHistory()  # claimed weights of earlier rounds' updates (the weight cap)

    def to_extra(self) -> dict[str, np.ndarray]:
        """As a ServerState.extra group (float64 arrays: the store keeps them bit for bit)."""
        out = {"norms": np.array(self.history.norms, np.float64)}
        if self.claims.norms:
            out["claims"] = np.array(self.claims.norms, np.float64)
        if self.center is not None:
            out["center"] = np.asarray(self.center, np.float64)
        return out

    @classmethod
    def from_extra(cls, group: dict[str, np.ndarray] | None) -> RobustState:
        if not group:
            return cls()
        center = group.get("center")
        return cls(NormHistory(tuple(float(n) for n in group.get("norms", ()))),
                   None if center is None else np.asarray(center, np.float64),
                   NormHistory(tuple(float(n) for n in group.get("claims", ()))))


class _Base:
    """Both kinds share add/mean/count; subclasses say what `_reduce` keeps.

    Async mode gives it each raw delta and the staleness weight f(s) in its meta
    (aggregate.py, weights_staleness): the norm bound clips the raw delta and weights it after
    (its history holds raw norms); the keep-all rules take the delta times f(s), as before."""

    weights_staleness = True

    def __init__(self) -> None:
        self.cfg: RobustConfig | None = None  # set by make_aggregator: what carry() needs
        self.prior = RobustState()
        self.like: Params | None = None
        self.count = 0
        self.total_weight = 0.0
        self.norms: list[float] = []
        self.claims: list[float] = []  # the weights as claimed (after the fixed cap), before any relative cap
        self.ids: list[str | None] = []  # device ids in arrival order, for the log of what was left out
        self.excluded_ids: list[str | None] = []  # set by mean(): the updates the norm bound's exclusion left out
        self.weight_cut: list[tuple[str | None, float, float]] = []  # set by mean(): (id, claim, cap), NOTED_CUT
        self.result_vec: np.ndarray | None = None
        self._reduced_at = -1  # the count result_vec was reduced at

    def add(self, tensors: Params, meta) -> None:
        weight = float(getattr(meta, "weight", meta))  # UpdateMeta (aggregate.Aggregator) or a number
        if not (weight > 0 and math.isfinite(weight)):
            raise RobustError(f"weight must be finite and > 0, got {weight}")
        factor = float(getattr(meta, "staleness_weight", 1.0))
        if not 0 < factor <= 1:
            raise RobustError(f"staleness weight must be in (0, 1], got {factor}")
        if self.like is None:
            self.like = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
        self._add(flatten(tensors), float(weight), factor)
        self.claims.append(float(weight))
        self.ids.append(getattr(meta, "device_id", None))
        self.count += 1
        self.total_weight += float(weight)

    def mean(self) -> Params:
        if self.like is None:
            raise RobustError("no contributions to aggregate")
        if self._reduced_at != self.count:  # once per set of updates: a retried close (a commit that failed)
            # must not draw the RNG again (the sign split's columns, the buckets): a restart would not
            self.result_vec, self._reduced_at = self._reduce(), self.count
        return unflatten(self.result_vec, self.like)

    result = mean

    @property
    def task_clip(self) -> float:
        """The L2 bound this round clips each update to, known before any update arrives (the
        devices may be asked to clip to it: records.open_round); inf = none known yet."""
        return math.inf

    def carry(self) -> dict[str, dict[str, np.ndarray]]:
        """The cross-round state after this round, as ServerState.extra groups (aggregate.py)."""
        return {EXTRA_KEY: advance(self.prior, self, self.cfg or RobustConfig()).to_extra()}

    def _note_cuts(self, cap: float) -> None:
        """The updates whose claim the relative weight cap cut by more than NOTED_CUT (left_out.py)."""
        self.weight_cut = [(i, c, cap) for i, c in zip(self.ids, self.claims) if c > NOTED_CUT * cap]

    def _add(self, vec: np.ndarray, weight: float, factor: float) -> None: ...
    def _reduce(self) -> np.ndarray: ...


class StreamingAggregator(_Base):
    """norm_bound with a history: each update clipped to `bound` and its weight capped at
    `weight_cap` as it arrives, into a running sum: O(model)."""

    def __init__(self, bound: float = math.inf, weight_cap: float = math.inf, exclude_above: float = math.inf,
                 cfg: NormBoundConfig | None = None, median_claim: float | None = None) -> None:
        super().__init__()
        self.acc = ClippedMean(bound, max(bound, exclude_above))
        self.weight_cap = weight_cap
        self.norm_cfg, self.median_claim = cfg or NormBoundConfig(), median_claim  # the config's allowance

    @property
    def task_clip(self) -> float:
        return self.acc.bound

    def _add(self, vec: np.ndarray, weight: float, factor: float) -> None:
        allowance = claim_allowance(self.norm_cfg, weight, self.median_claim)
        self.norms.append(self.acc.add(vec, min(weight, self.weight_cap), allowance, factor))

    def _reduce(self) -> np.ndarray:
        self.excluded_ids = _left_out(self.ids, self.acc)
        self._note_cuts(self.weight_cap)
        return self.acc.result()


class ColdStartAggregator(_Base):
    """norm_bound before there is a history: keeps the round's updates (O(k x model), these
    rounds only), then clips each to multiplier x the median of their norms and caps each
    weight at weight_multiplier x the median of their claims (norm_bound.py)."""

    def __init__(self, cfg: NormBoundConfig) -> None:
        super().__init__()
        self.norm_cfg = cfg
        self.rows: list[np.ndarray] = []
        self.factors: list[float] = []  # staleness weights (async), applied after the clip

    def _add(self, vec: np.ndarray, weight: float, factor: float) -> None:
        self.rows.append(vec)
        self.factors.append(factor)
        self.norms.append(float(np.linalg.norm(vec)))

    def _reduce(self) -> np.ndarray:
        bound, exclusion, cap = round_limits(self.norm_cfg, self.norms, self.claims)
        acc = ClippedMean(bound, exclusion)
        median_claim = float(np.median(self.claims))
        for row, weight, factor in zip(self.rows, self.claims, self.factors):
            acc.add(row, min(weight, cap), claim_allowance(self.norm_cfg, weight, median_claim), factor)
        self.excluded_ids = _left_out(self.ids, acc)
        self._note_cuts(cap)
        return acc.result()


def _left_out(ids: list, acc: ClippedMean) -> list:
    """The ids of the updates `acc` left out of its mean: none when every one was over the
    exclusion bound (the bound is stale, and they are all clipped in)."""
    if acc.total is None:
        return []
    return [i for i, out in zip(ids, acc.left_out) if out]


class KeepAllAggregator(_Base):
    """A keep-all rule over the round's rows: O(k x model)."""

    def __init__(self, rule: Callable[[np.ndarray], np.ndarray], bucket_size: int, rng: np.random.Generator):
        super().__init__()
        self.rule, self.bucket_size, self.rng = rule, bucket_size, rng
        self.rows: list[np.ndarray] = []

    def _add(self, vec: np.ndarray, weight: float, factor: float) -> None:
        vec = vec * factor if factor != 1.0 else vec  # the delta times f(s), as async fed it before
        self.rows.append(vec)
        self.norms.append(float(np.linalg.norm(vec)))

    def _reduce(self) -> np.ndarray:
        x = np.stack(self.rows)
        if self.bucket_size > 1:
            return bucketing(x, self.bucket_size, self.rule, self.rng)
        return self.rule(x)


def _krum(beta: float) -> Callable[[np.ndarray], np.ndarray]:
    """Multi-Krum with f = floor(beta * k), lowered to what k inputs allow (2f + 2 < k), and the
    coordinate median below 3 inputs: a round that closes at a small quorum still aggregates,
    tolerating fewer Byzantine inputs, instead of failing at close."""

    def rule(x: np.ndarray) -> np.ndarray:
        k = x.shape[0]
        if k < 3:
            return coordinate_median(x)
        return multi_krum(x, min(math.floor(beta * k), (k - 3) // 2))

    return rule


def make_aggregator(name: str, cfg: RobustConfig, state: RobustState, rng: np.random.Generator,
                    guard_loss: Callable[[Params], float] | None = None):
    """A fresh aggregator for one round: add(tensors, weight), mean(), count. `guard_loss`: the
    guard-set loss of the current model moved by a delta, when the coordinator has a guard set
    (norm_bound then screens: screening.py)."""
    if name == "mean":
        return WeightedMean()
    screens = guard_loss is not None and cfg.screen.enabled
    if name == "norm_bound" and (screens or cfg.sign.enabled):  # they need the round's rows
        from .screened import ScreenedAggregator  # it builds on _Base, defined here

        agg = ScreenedAggregator(cfg.norm, cfg.screen, state, guard_loss if screens else None, cfg.sign, rng)
    else:
        agg = _make(name, cfg, state, rng)
    agg.cfg, agg.prior = cfg, state
    return agg


def _make(name: str, cfg: RobustConfig, state: RobustState, rng: np.random.Generator) -> _Base:
    if name == "norm_bound":
        bound = state.history.bound(cfg.norm)
        if not 0 < bound < math.inf:  # no (nonzero) history yet, no initial_bound: the round's own median
            return ColdStartAggregator(cfg.norm)
        return StreamingAggregator(bound, state.claims.weight_cap(cfg.norm), state.history.exclusion(cfg.norm),
                                   cfg.norm, state.claims.median(cfg.norm))
    beta = cfg.byzantine_fraction
    if name == "median":
        rule = coordinate_median
    elif name == "trimmed_mean":
        rule = lambda x: trimmed_mean(x, beta)  # noqa: E731
    elif name == "krum":
        rule = _krum(beta)
    elif name == "centered_clipping":
        tau = cfg.cc_tau or state.history.bound(NormBoundConfig(multiplier=1.0, window=cfg.norm.window,
                                                                min_history=cfg.norm.min_history))
        center = state.center  # tau is inf until there is a history: the first rounds get the mean
        rule = lambda x: centered_clipping(x, tau, cfg.cc_iterations, _fit(center, x.shape[1]))  # noqa: E731
    else:
        raise BadRobustParameter(f"aggregator {name!r}: choose one of {', '.join(AGGREGATORS)}")
    return KeepAllAggregator(rule, cfg.bucket_size, rng)


def advance(state: RobustState, agg, cfg: RobustConfig) -> RobustState:
    """The cross-round state after `agg`'s round committed (plain means learn nothing)."""
    if not isinstance(agg, _Base):
        return state
    return RobustState(state.history.record(agg.norms, cfg.norm), agg.result_vec,
                       state.claims.record(agg.claims, cfg.norm))


def _fit(center: np.ndarray | None, d: int) -> np.ndarray | None:
    return center if center is not None and center.shape == (d,) else None


def _from_context(name: str) -> Callable[[AggregatorContext], _Base]:
    def factory(ctx: AggregatorContext) -> _Base:
        cfg = ctx.settings if isinstance(ctx.settings, RobustConfig) else RobustConfig()
        return make_aggregator(name, cfg, RobustState.from_extra(ctx.extra.get(EXTRA_KEY)), ctx.rng(),
                               ctx.guard_loss)

    return factory


for _name in AGGREGATORS[1:]:  # "mean" is the registry's own streaming mean
    register_aggregator(_name, _from_context(_name))
