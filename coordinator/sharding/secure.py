"""Secure aggregation per shard group ([coordinator] shards = K, secure_aggregation enabled).

The leader splits each round's selected devices into shard groups (groups.py: by shard, small
groups merged) and runs one SecAgg instance per group (secagg/round_state.SecAggRound): the
group's own cohort, neighbour graph and (k, t) from SecAggConfig.graph_for(group size), its own
dropout recovery. The devices need no change: a KeyDirectory names the group as the cohort,
and the device rebuilds its graph and Shamir points from it.

    advertise  every selected device gets its group's spec (under distributed DP, its group's
               noise: secure_dp.py)
    share      a group with fewer devices that advertised than max(3, its min_inputs) is out, and
               with it the round: it could not be unmasked (below), so it is abandoned at once, by
               the unmask refusal's reason, before any KeyDirectory leaves (no group's devices
               agree keys, mask and upload for nothing, nor wait out the share and mask deadlines)
    mask       each group's members receive their group's shares only
    unmask     sent to no group unless EVERY group is in and kept its min_inputs masked inputs
               (unmask_refusal; else the round is abandoned before any request leaves); the first
               accepted answer charges the round (SecAggShell._release: one group's answers can
               make its sum computable while the round is still abandoned, another short of t);
               each group's request names the group's alive and dropped only, so a device reveals
               shares of its group's members alone, and the dropped of one group cost nothing
               to another
    sum        per group, in shard order: refused (UnmaskFailed, the round is abandoned, nothing
               applied) when the group kept fewer masked inputs than its min_inputs or some
               secret of it has fewer than its t shares; else its field sum unmasked and
               decoded to real units. The leader adds the G decoded sums in shard order and
               divides by the survivors' number: the usual mean, then the strategy's server step
               and the commit with epoch fencing (leader.py).

Where the masked inputs go: to the LEADER, on each device's update channel, as in the
one-machine protocol; the aggregator workers take no part in a secure round. Summing them on
the shard workers (modulo 2^m, stored with their keys in the shard tables) is not built: the
leader receives the bulky part itself, per group.

The round machine keeps one quorum per stage for the whole cohort; the unmask stage's is the
sum of the groups' t (each group needs its own t responders: checked per group at the sum).
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from fedge.edge_runtime.kernel.secagg import ddg, quantize
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec
from fedge.edge_runtime.kernel.secagg.recovery import UnmaskFailed
from fedge.edge_runtime.kernel.secagg.subset import shared_coordinates

from ..records import OpenRound
from ..secagg.round_state import GROUP_OUT, SecAggRound, params_from_flat
from ..secagg.shell import SecAggShell
from ..secagg.stages import SHARE, UNMASK, UNMASK_STAGE
from .groups import GROUP_MIN_MEMBERS, ShardGroup, group_floor, shard_groups
from .secure_dp import group_specs, with_groups

log = logging.getLogger("fedge.coordinator")


def decode_total(total: np.ndarray, count: int, dimension: int, spec: SecAggSpec) -> np.ndarray:
    """The real-valued sum of `count` devices over all coordinates from their unmasked field sum
    over the round's subset (shared_encoding.decode_mean, without the division)."""
    idx = shared_coordinates(dimension, spec.keep_fraction, spec.rotation_seed)
    out = np.zeros(dimension)
    if spec.distributed_dp:
        out[idx] = ddg.decode(total, spec.rotation_seed, spec.dp_gamma, spec.field_bits)
    else:
        out[idx] = quantize.decode(total, count, spec.rotation_seed, spec.clip_range, spec.bits)
    return out


class GroupedSecAgg:
    """One secure round as G SecAggRounds, one per shard group; the interface SecAggShell uses
    (open_stage, request, accept, mean_delta, cohort, k, t), dispatched by the device's group."""

    def __init__(self, groups: tuple[ShardGroup, ...], rounds: tuple[SecAggRound, ...]):
        if len(groups) != len(rounds) or not groups:
            raise ValueError("one SecAggRound per shard group, and at least one group")
        self.groups, self.rounds = groups, rounds
        self.group_of = {d: i for i, g in enumerate(groups) for d in g.members}
        self.out: dict[int, str] = {}  # group index -> why it left the round

    @property
    def cohort(self) -> tuple[str, ...]:
        return tuple(sorted(d for r in self.rounds for d in r.cohort))

    @property
    def k(self) -> int:
        return max(r.k for r in self.rounds)

    @property
    def blamed(self) -> set[str]:
        """Senders whose shares too few could open, in any group (round_state.unmasked_sum)."""
        return set().union(*(r.blamed for r in self.rounds))

    @blamed.setter
    def blamed(self, value: set[str]) -> None:  # the shell clears it once it has taken it
        for r in self.rounds:
            r.blamed = set(value)

    @property
    def left_out(self) -> set[str]:
        """Holders whose unmask answer was left out, in any group (recovery.wrong_holders)."""
        return set().union(*(r.left_out for r in self.rounds))

    @left_out.setter
    def left_out(self, value: set[str]) -> None:
        for r in self.rounds:
            r.left_out = set(value)

    @property
    def t(self) -> int:
        """Unmask responders the round needs at least: every live group's own t."""
        return sum(r.t for i, r in enumerate(self.rounds) if i not in self.out)

    def live(self, device_id: str) -> bool:
        i = self.group_of.get(device_id)
        return i is not None and i not in self.out

    def _split(self, asked) -> list[tuple[str, ...]]:
        per: list[list[str]] = [[] for _ in self.groups]
        for device_id in asked:
            if device_id in self.group_of:
                per[self.group_of[device_id]].append(device_id)
        return [tuple(p) for p in per]

    def unmask_refusal(self, inputs: tuple[str, ...]) -> str:
        """Why no group may be unmasked, given the devices whose masked inputs arrived ("" = go).
        Checked BEFORE any unmask request leaves: the devices check only their own neighbours,
        so a group short of its minimum would answer, and its sum (or another group's, while the
        round is then abandoned uncharged) would be computable below the quorum it promises."""
        for i, (g, mine) in enumerate(zip(self.groups, self._split(inputs))):
            if i in self.out:
                return f"shard group {g.label}: {self.out[i]}"
            if len(mine) < g.min_inputs:
                return f"shard group {g.label}: {len(mine)} masked inputs, its sum needs {g.min_inputs}"
        return ""

    def open_stage(self, stage: str, asked: tuple[str, ...]) -> None:
        for i, mine in enumerate(self._split(asked)):
            if i in self.out:
                continue
            # A group needs the floor it was formed with (groups.py: a graph of 2 gives one
            # neighbour both shares of a seed) and can never unmask below its minimum inputs.
            least = max(GROUP_MIN_MEMBERS, self.groups[i].min_inputs)
            if stage == SHARE and len(mine) < least:
                self.out[i] = f"{len(mine)} device(s) advertised keys, the group needs {least}"
                continue
            self.rounds[i].open_stage(stage, mine)

    def request(self, stage: str, device_id: str, task_id: str, task=None):
        return self.rounds[self.group_of[device_id]].request(stage, device_id, task_id, task)

    def accept(self, stage: str, reply) -> str | None:
        if not self.live(reply.device_id):  # a safety net: a group out at the share stage ends the round there (send)
            return GROUP_OUT
        return self.rounds[self.group_of[reply.device_id]].accept(stage, reply)

    def group_sums(self) -> list[tuple[np.ndarray, int]]:
        """Each group's decoded real-valued sum and its survivors, in shard order; UnmaskFailed
        names the first group that cannot be unmasked (module docstring). Every group is tried
        even after one failed: each names its own bad dealers (round_state.unmasked_sum, `blamed`),
        so they all sit out from the next round, as one coordinator's cohort would. Stopping at
        the first failure left a later group's dealers unnamed, to spoil the next round too."""
        out, failed = [], None
        for i, (g, r) in enumerate(zip(self.groups, self.rounds)):
            try:
                out.append(self._group_sum(i, g, r))
            except UnmaskFailed as exc:
                failed = failed or exc
        if failed is not None:
            raise failed
        return out

    def _group_sum(self, i: int, g: ShardGroup, r: SecAggRound) -> tuple[np.ndarray, int]:
        if i in self.out:
            raise UnmaskFailed(f"shard group {g.label}: {self.out[i]}")
        if len(r.alive) < g.min_inputs:
            raise UnmaskFailed(f"shard group {g.label}: {len(r.alive)} masked inputs, its sum needs {g.min_inputs}")
        try:
            total, n = r.unmasked_sum()
        except UnmaskFailed as exc:  # of its kind: an Unexplained one is counted (metrics.py)
            raise type(exc)(f"shard group {g.label}: {exc}") from None
        return decode_total(total, n, r.dimension, r.spec), n

    def mean_delta(self) -> tuple[dict[str, np.ndarray], int, None]:
        """The survivors' mean: the groups' sums added in shard order, over their number (and no
        clipped count: adaptive clipping is refused with shards, dp/config.py)."""
        sums = self.group_sums()
        total, n = sums[0][0].copy(), sums[0][1]
        for part, count in sums[1:]:
            total += part
            n += count
        return params_from_flat(total / n, self.rounds[0].shapes), n, None


class ShardedSecAggShell(SecAggShell):
    """SecAggShell whose round state is a GroupedSecAgg (the leader of a sharded fleet)."""

    def _new_state(self, rnd: OpenRound) -> GroupedSecAgg:
        m = rnd.machine
        quorum = min(lim.quorum for lim in m.limits[:UNMASK_STAGE])  # the fewest inputs the round commits with
        groups = shard_groups(m.selected, self.config.shards, group_floor(self.sa.threshold), quorum)
        specs, noise = group_specs(self._spec(rnd), rnd.privacy, groups, self.dimension, self.sa.bits)
        if noise:  # the ledger records each group's noise with the round's charge (secure_dp.py)
            rnd.privacy = with_groups(rnd.privacy, noise)
        sha = hashlib.sha256(rnd.params_bytes).hexdigest()
        rounds = tuple(SecAggRound(m.round_id, spec, sha, self.graph_seed(rnd), self.shapes, self.sa.graph_for,
                                   self.identities)  # each group checks signatures as one round does
                       for spec in specs)
        log.info("round %d: %d shard groups: %s", m.round_id, len(groups),
                 ", ".join(f"[{g.label}] {len(g.members)} devices, >= {g.min_inputs} inputs" for g in groups))
        for n in noise:
            log.info("round %d: shard group %s: distributed DP gamma=%.4g sigma=%.4g per device, sum noise std "
                     "%.4g at %d inputs (z_eff=%.4f)", m.round_id, "+".join(map(str, n.shards)), n.gamma, n.sigma,
                     n.noise_std, n.min_inputs, n.noise_multiplier)
        return GroupedSecAgg(groups, rounds)

    def send(self, rnd: OpenRound, stage: str, devices: tuple[str, ...], now: float) -> str | None:
        """As SecAggShell.send; a string: why the round must stop instead (unmask_refusal)."""
        state = self._state(rnd)
        if stage == SHARE:
            state.open_stage(SHARE, devices)  # fixes each group's cohort; a group too small leaves
            for i, why in state.out.items():
                log.warning("round %d: shard group %s left the round: %s", rnd.ctx.round_id, state.groups[i].label,
                            why)
            for g, r in zip(state.groups, state.rounds):
                if r.cohort:
                    log.info("round %d: shard group %s: cohort %d, k=%d, t=%d", rnd.ctx.round_id, g.label,
                             len(r.cohort), r.k, r.t)
        # At the share stage a group out already dooms the unmask (unmask_refusal): stopped here, no
        # other group's devices agree keys, mask and upload for the two stage deadlines it would take.
        why = state.unmask_refusal(devices) if stage == UNMASK or (stage == SHARE and state.out) else ""
        if why:  # no request leaves: the round is abandoned (server._run) with nothing revealed
            log.warning("round %d: no shard group is unmasked (at the %s stage): %s", rnd.ctx.round_id, stage, why)
            if stage == SHARE:  # the record's reason: no unmask was tried, nothing revealed or charged
                return f"secure aggregation stopped at the share stage: {why} (the round could not be unmasked)"
            return f"secure aggregation could not unmask: {why}"
        super().send(rnd, stage, tuple(d for d in devices if state.live(d)), now)
        return None
