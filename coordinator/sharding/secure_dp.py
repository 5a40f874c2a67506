"""Distributed DP with shard groups: every group's sum carries the full calibrated noise by itself.

The leader unmasks each shard group's sum on its own (secure.py), so it sees G noised sums, not
one. Each must be private by itself: a group's devices get the discrete Gaussian parameters
(dp/distributed.params_for) for the group's own fewest inputs (groups.min_inputs) and its own
selected size (the field's headroom), never the round's: the sum of a group that keeps only
min_inputs devices has noise multiplier z_eff >= z, as the one-machine round's sum has.

What the accountant charges, and why it is the same charge as one group's:

  * a device is in exactly one group, so adding or removing it changes one group's sum by at
    most its bound: that sum's z_eff >= z covers it (parallel composition over disjoint groups);
  * replacing one device by another (the relation of fixed-size sampling) may change two
    groups' sums, each by at most one device's bound B. The pair has L2 sensitivity sqrt(2) B
    against noise of at least z B in each: multiplier >= z / sqrt(2) >= z / 2, the replace-one
    multiplier the one-machine round is charged at (accountant.py: its sensitivity is 2B);
  * so each round is charged RoundCharge(population, cohort, z), as without shards: the ε is
    computed for the noise one group's sum carries, and dp-accounting composes the rounds.

The price is noise, which the ledger states: the committed mean carries G groups' noise, so
its noise variance is (at the groups' minimum inputs) the sum of the G groups' variances,
about G times one group's, a standard deviation about sqrt(G) times. RoundPlan.groups holds
each group's record (GroupNoise), in the privacy ledger with the round's charge.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec
from fedge.edge_runtime.kernel.secagg.shared_encoding import subset_size

from ..dp.distributed import params_for
from ..dp.round import RoundPlan
from .groups import ShardGroup


@dataclass(frozen=True)
class GroupNoise:
    """One shard group's noise, as the ledger records it."""

    shards: tuple[int, ...]
    selected: int  # devices of the group asked
    min_inputs: int  # the fewest masked inputs its sum is unmasked with
    gamma: float  # the grid step, real units
    sigma: float  # each device's discrete Gaussian std, integer units
    noise_std: float  # gamma * sigma * sqrt(min_inputs): the group sum's noise std per coordinate, real units
    noise_multiplier: float  # z_eff of the group's sum at min_inputs (>= the z charged)


def group_specs(spec: SecAggSpec, plan: RoundPlan | None, groups: tuple[ShardGroup, ...], dimension: int,
                field_bits: int) -> tuple[tuple[SecAggSpec, ...], tuple[GroupNoise, ...]]:
    """Each group's spec (with its own dp_gamma, dp_sigma) and noise record; without a
    distributed plan, `spec` for every group and no record."""
    if plan is None or plan.mechanism != "distributed":
        return (spec,) * len(groups), ()
    d = subset_size(dimension, spec)
    specs, noise = [], []
    for g in groups:
        p = params_for(plan.noise_multiplier, plan.clip_norm, spec.clip_range, d, g.min_inputs, len(g.members),
                       field_bits)
        specs.append(dataclasses.replace(spec, bits=field_bits, field_bits=field_bits, dp_gamma=p.gamma,
                                         dp_sigma=p.sigma, dp_clip_norm=plan.clip_norm))
        noise.append(GroupNoise(g.shards, len(g.members), g.min_inputs, p.gamma, p.sigma,
                                p.gamma * p.sigma * math.sqrt(g.min_inputs), p.noise_multiplier))
    return tuple(specs), tuple(noise)


def with_groups(plan: RoundPlan, noise: tuple[GroupNoise, ...]) -> RoundPlan:
    """The plan that the ledger records: the same charge, with the groups' noise."""
    return dataclasses.replace(plan, groups=tuple(dataclasses.asdict(n) for n in noise))


def total_noise_std(groups) -> float:
    """The committed sum's noise std per coordinate at the groups' minimum inputs: the groups'
    noises are independent, so their variances add. `groups`: RoundPlan.groups (dicts)."""
    return math.sqrt(math.fsum(g["noise_std"] ** 2 for g in groups))
