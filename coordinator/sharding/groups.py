"""Shard groups of a secure round ([coordinator] shards = K with secure aggregation): who runs
SecAgg with whom, and how few masked inputs a group may be unmasked with. Pure.

A round's selected devices are split by their home shard (config.shard_for), in shard index
order: a secure round reads no worker liveness (the workers take no part in it), so every device
is assigned its home shard (leader.py) and the groups follow the round's assignment.
A group whose selected size is under `group_floor` is merged into the next non-empty one (the
last into the one before it), so every group can run the protocol with some strength:

    floor = max(3, threshold + 1)   3: with 2 members the graph has k = 1 and t = 1, so a
                                    device's one neighbour alone holds both of its seeds'
                                    shares; threshold + 1: a configured t must fit in a group

Merging, not refusing the round: a random cohort of a small fleet over K shards often has one
small group, and refusing would stall such fleets for good; what a merged group costs is that
its sum covers two shards, which nothing relies on (the leader receives the masked inputs:
secure.py). A round with a single group (every group merged) is the one-machine protocol.

Each group's sum is seen on its own, so each must hold enough inputs by itself:

    min_inputs(group) = max(2, ceil(q * n_g / n))

with q the fewest masked inputs the round may commit with (the lowest quorum of the stages
before unmask, as secagg/private.py), n_g the group's selected devices and n all selected:
the group's share of the round's quorum, and never one (the sum of one input is that input).
Under distributed DP each group's noise is calibrated for exactly this many inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import shard_for


@dataclass(frozen=True)
class ShardGroup:
    shards: tuple[int, ...]  # shard indices, ascending; more than one when small groups merged
    members: tuple[str, ...]  # selected devices, sorted
    min_inputs: int  # masked inputs the group's sum needs (module docstring)

    @property
    def label(self) -> str:
        return "+".join(map(str, self.shards))


GROUP_MIN_MEMBERS = 3  # a graph of 2 gives one neighbour both shares of a device's seeds


def group_floor(threshold: int) -> int:
    """The fewest selected devices a group keeps to itself (module docstring)."""
    return max(GROUP_MIN_MEMBERS, threshold + 1)


def min_inputs(group_size: int, selected: int, quorum: int) -> int:
    return max(2, math.ceil(quorum * group_size / selected))


def shard_groups(selected: tuple[str, ...], shards: int, floor: int, quorum: int) -> tuple[ShardGroup, ...]:
    """The round's groups in shard order (module docstring); quorum: the q of min_inputs."""
    by_shard: dict[int, list[str]] = {}
    for device_id in selected:
        by_shard.setdefault(shard_for(device_id, shards), []).append(device_id)
    merged: list[tuple[list[int], list[str]]] = []
    pending: tuple[list[int], list[str]] = ([], [])
    for shard in sorted(by_shard):
        pending[0].append(shard)
        pending[1].extend(by_shard[shard])
        if len(pending[1]) >= floor:
            merged.append(pending)
            pending = ([], [])
    if pending[1]:
        if merged:  # the last group is too small: into the one before it
            merged[-1][0].extend(pending[0])
            merged[-1][1].extend(pending[1])
        else:
            merged.append(pending)
    n = len(selected)
    return tuple(ShardGroup(tuple(s), tuple(sorted(m)), min_inputs(len(m), n, quorum))
                 for s, m in merged)
