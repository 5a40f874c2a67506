"""DP-FedAvg in the coordinator's rounds: the round's plan and its aggregator.

    RoundPlan           one round's mechanism and charge, fixed before its first task leaves and
                        stored with the open round, so a restart replays the same noise
    DpMean              the aggregator: clip each decoded delta to S (never reject), sum, add
                        N(0, (zS)^2) drawn from (seed, round), divide by the expected cohort
    adaptive clipping   (Andrew et al. 2021) with privacy.target_quantile > 0: DpMean also counts
                        the devices whose reported norm was within S, adds N(0, σ_b^2) to that
                        count (centred: Σ (b_i - 1/2)), and moves S for the next round by
                        S exp(-η (b̃ - γ)); the new S rides in ServerState.extra["dp"], committed
                        with the model. The delta noise z_Δ satisfies z_Δ^-2 + (2σ_b)^-2 = z^-2:
                        the pair (Σ Δ_i / S, Σ (b_i - 1/2)) is one Gaussian query whose noise
                        multiplier is z, which the accountant charges. The bit comes from the
                        norm the device reports (Update.metrics["norm"], stored with the
                        update for replay); a device without one counts its decoded norm

Which aggregators and settings privacy refuses, and why: dp/config.py (check_coordinator).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np

from .accountant import RoundCharge
from .config import ACCOUNTANTS, MECHANISMS
from .mechanism import clip_to_norm, global_norm, noised_mean

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class RoundPlan:
    """One DP round: the sampling event the accountant charges and the mechanism the aggregator runs."""

    population: int  # eligible devices when the round began
    cohort: int  # devices asked, over-selection included
    noise_multiplier: float  # z
    clip_norm: float  # S
    expected_cohort: int  # W: the reports the round wants (the fixed denominator)
    delta: float
    target_epsilon: float
    epsilon_after: float  # the ledger's ε with this round charged, by `accountant`
    sampling: str = "fixed"
    accountant: str = "rdp"
    delta_noise_multiplier: float = 0.0  # z_Δ on the deltas; 0 = z (no adaptive clipping)
    count_stddev: float = 0.0  # σ_b on the count of unclipped devices (adaptive clipping), else 0
    target_quantile: float = 0.0  # γ; 0 = S stays fixed
    clip_lr: float = 0.0  # η
    mechanism: str = "central"  # or "distributed": the devices noise under SecAgg (distributed.py)
    # Sharded secure rounds: each shard group's noise (sharding/secure_dp.GroupNoise as dicts);
    # each group's sum carries z by itself, the charge stays one group's. () = one sum.
    groups: tuple = ()
    # 32 hex digits drawn from the OS when the round is planned (budget.py): the central noise's
    # seed with (seed, round) (noise_rng). "" (a plan from before it): (seed, round) alone.
    noise_key: str = ""

    def charge(self) -> RoundCharge:
        return RoundCharge(self.population, self.cohort, self.noise_multiplier, self.sampling)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict | None) -> RoundPlan | None:
        """The plan a state file holds (hostile: ValueError saying which field is wrong), or None."""
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ValueError(f"a round's plan must be a JSON object, not {type(data).__name__}")
        kinds = {f.name: f.type for f in fields(cls)}
        if unknown := sorted(set(data) - set(kinds)):
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        for name, value in data.items():
            kind = kinds[name]
            good = (isinstance(value, int) and not isinstance(value, bool) if kind == "int" else
                    _number(value) if kind == "float" else isinstance(value, str) if kind == "str" else True)
            if not good:
                raise ValueError(f"{name} = {value!r} is not a finite {kind}")
        try:
            plan = cls(**data)
        except TypeError as exc:  # a required field missing
            raise ValueError(str(exc)) from None
        plan.charge()  # RoundCharge checks population, cohort, z and sampling
        if not (0 < plan.delta < 1 and plan.target_epsilon > 0 and plan.clip_norm > 0 and plan.expected_cohort >= 1):
            raise ValueError("needs 0 < delta < 1, target_epsilon > 0, clip_norm > 0 and expected_cohort >= 1")
        if plan.accountant not in ACCOUNTANTS:
            raise ValueError(f"accountant {plan.accountant!r}: choose one of {ACCOUNTANTS}")
        if plan.mechanism not in MECHANISMS:  # any other name would be charged as no mechanism (records.py)
            raise ValueError(f"mechanism {plan.mechanism!r}: choose one of {MECHANISMS}")
        if not (plan.epsilon_after >= 0 and plan.delta_noise_multiplier >= 0 and plan.count_stddev >= 0
                and 0 <= plan.target_quantile < 1 and plan.clip_lr >= 0):
            raise ValueError("needs epsilon_after, delta_noise_multiplier, count_stddev and clip_lr >= 0 and "
                             "0 <= target_quantile < 1")
        if not isinstance(plan.groups, (list, tuple)) or not all(
                isinstance(g, dict) and _number(g.get("noise_std")) and g["noise_std"] > 0 for g in plan.groups):
            raise ValueError(f"groups = {plan.groups!r:.60} is not a list of shard groups, each with a finite "
                             "noise_std > 0")
        if plan.noise_key and not re.fullmatch(NOISE_KEY_PATTERN, plan.noise_key):
            raise ValueError(f"noise_key = {plan.noise_key!r:.60} is not {NOISE_KEY_HEX} hex digits")
        return plan

    @property
    def adaptive(self) -> bool:
        return self.target_quantile > 0


def _number(value) -> bool:
    """A finite JSON number (no bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


NOISE_KEY_HEX = 32  # 128 bits
NOISE_KEY_PATTERN = f"[0-9a-f]{{{NOISE_KEY_HEX}}}"


def noise_rng(plan: RoundPlan, seed: int, round_id: int) -> Callable[[], np.random.Generator]:
    """The RNG of a round's central noise: from (noise_key, seed, round), so a replay of the round
    after a restart (the plan is stored with it) draws the same noise, and knowing the config's
    seed, which draws the cohort, does not give the noise: from (seed, round) alone anyone who
    knows the seed (0 by default) could subtract it from the released model and read the
    noiseless sum. A plan without a key (written before there was one) keeps (seed, round)."""
    entropy = [int(plan.noise_key, 16), seed, round_id] if plan.noise_key else [seed, round_id]
    return lambda: np.random.default_rng(entropy)


CLIP_GROUP = "dp"  # ServerState.extra group of adaptive clipping's state: {"clip_norm": 0-d float64}


def split_noise(z: float, count_stddev: float) -> float:
    """z_Δ with z_Δ^-2 + (2 count_stddev)^-2 = z^-2 (module docstring); needs 2 count_stddev > z."""
    if not 2 * count_stddev > z:
        raise ValueError(f"the count's noise {count_stddev:g} must exceed z / 2 = {z / 2:g}")
    return (z ** -2 - (2 * count_stddev) ** -2) ** -0.5


def next_clip(clip: float, unclipped_fraction: float, target_quantile: float, clip_lr: float) -> float:
    """The geometric update of Andrew et al. 2021: S exp(-η (b̃ - γ))."""
    return float(clip * np.exp(-clip_lr * (unclipped_fraction - target_quantile)))


class DpMean:
    """The DP-FedAvg aggregator of one round (module docstring). Its state is a function of the
    `add` calls alone and its noise comes from `rng()` (seeded by (seed, round)), so a replay
    after a restart rebuilds the same sum and draws the same noise: the released aggregate is
    bit-identical, and is charged once.

    Async mode hands it each raw delta and f(s) (aggregate.py, weights_staleness): it clips to S,
    then weights, f(s) clip_S(Δ), FedBuff's order; with 0 < f <= 1 each update still adds at most
    S. Scaled first, an update over S / f(s) was clipped back to S: stale, it counted as a fresh one."""

    weights_staleness = True

    def __init__(self, plan: RoundPlan, rng: Callable[[], np.random.Generator]):
        self.plan = plan
        self._rng = rng
        self.sums: Params = {}
        self.count = 0
        self.clipped = 0  # updates whose decoded norm exceeded S (quantization, or a device that did not clip)
        self.max_norm = 0.0  # the largest norm after the coordinator's clip: <= S
        self.released = False  # result() ran: the noised aggregate exists and the round is charged
        self.within = 0  # adaptive clipping: devices whose norm (as reported) was <= S
        self.next_clip: float | None = None  # adaptive clipping: S for the next round, set by result()

    def add(self, delta: Params, meta) -> None:
        bounded, norm = clip_to_norm(delta, self.plan.clip_norm)
        factor = float(getattr(meta, "staleness_weight", 1.0))
        if not 0 < factor <= 1:  # more than 1 would break the sensitivity S
            raise ValueError(f"staleness weight must be in (0, 1], got {factor}")
        if factor != 1.0:  # a sync round's f is 1: its sums keep their bits
            bounded = {k: v * factor for k, v in bounded.items()}
        self.clipped += int(norm > self.plan.clip_norm)
        reported = getattr(meta, "reported_norm", None)
        self.within += int((norm if reported is None else reported) <= self.plan.clip_norm)
        self.max_norm = max(self.max_norm, global_norm(bounded))
        for name, value in bounded.items():
            if name in self.sums:
                self.sums[name] += value
            else:
                self.sums[name] = np.array(value, np.float64)
        self.count += 1

    def add_clipped_sum(self, sums: Params, count: int) -> None:
        """`count` deltas each clipped to S elsewhere, already summed in float64: what `count` add
        calls would leave in `sums` (a sharded round's workers clip at admission and sum,
        sharding/privacy.py). Adaptive clipping's per-device bit is not in a sum: refused."""
        if self.plan.adaptive:
            raise ValueError("adaptive clipping needs each device's bit; a clipped sum does not carry it")
        for name, value in sums.items():
            if name in self.sums:
                self.sums[name] += value
            else:
                self.sums[name] = np.array(value, np.float64)
        self.count += count

    def result(self) -> Params:
        if self.count == 0 and self.plan.sampling != "poisson":  # Poisson: an empty draw releases noise alone
            raise ValueError("no contributions to average")
        self.released = True
        p, rng = self.plan, self._rng()
        z_delta = p.delta_noise_multiplier or p.noise_multiplier
        mean = noised_mean(self.sums, z_delta, p.clip_norm, p.expected_cohort, rng)
        if p.adaptive:  # drawn after the deltas' noise, from the same stream: a replay draws the same
            centred = self.within - self.count / 2 + float(rng.normal(0.0, p.count_stddev))
            self.next_clip = next_clip(p.clip_norm, centred / p.expected_cohort + 0.5, p.target_quantile, p.clip_lr)
        return mean

    def release_count(self, centred: float, reports: int) -> None:
        """Adaptive clipping under distributed DP: the next S from the noised, centred count
        sum_i (b_i - 1/2) + noise that the devices' secure sum carried (noised on the devices,
        ddg.count_coordinate), instead of the count `add` would keep and `result` would noise.

        Clamped to [-reports/2, reports/2], what the survivors' bits can sum to: inside the
        secure sum a device may send any field value, which moves the count by up to
        2^(m-1) / kappa (5.6 with m = 16, kappa = 5,820) where a bit moves it by 0.5. Within the
        range one device still moves it further than its bit could. The clamp is post-processing
        of a released value, so it costs no privacy."""
        p = self.plan
        centred = min(max(centred, -reports / 2), reports / 2)
        self.next_clip = next_clip(p.clip_norm, centred / p.expected_cohort + 0.5, p.target_quantile, p.clip_lr)

    def carry(self) -> dict:
        """The next round's S, committed with the model (adaptive clipping); nothing otherwise."""
        return {} if self.next_clip is None else {CLIP_GROUP: {"clip_norm": np.array(self.next_clip, np.float64)}}
