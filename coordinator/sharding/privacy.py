"""Central DP-FedAvg in a sharded round: the workers clip, the leader noises the merged sum once.

    worker   reads the round's DP plan from its rounds row (the leader stored it before the
             first task left: the same RoundPlan the single-machine coordinator uses), and
             adds each admitted delta clipped to the plan's S (mechanism.clip_to_norm, as
             DpMean.add does; never a rejection) with weight 1 (privacy needs weighting =
             "equal") to its shard's partial sum
    leader   ShardDpSums: at Aggregate seals the round, merges the K partial sums in shard
             order (sums.merge) and hands the merged clipped sum to the round's DpMean
             (DpMean.add_clipped_sum), which adds N(0, (zS)^2) ONCE, drawn from (seed, round),
             and divides by the fixed expected cohort W. `released` is DpMean's, so the store
             commits the round's charge to the privacy ledger in the same transaction as the
             model, and the budget (dp/budget.py) refuses the next round exactly as on one
             machine: the leader is a Coordinator, only the sum was formed elsewhere.

The sensitivity argument is unchanged: each device's contribution to the merged sum is its
clipped delta, once (the (round, device, update id) key is unique across shards, and a
device belongs to one shard). The leader checks that every contribution had weight 1
(merged weight == count) before it releases anything: a worker that weighted by examples
would have let one device move the sum by more than S.

Not here, refused by name in config.py: adaptive clipping (each device's clipped-or-not bit
would need its own column), and distributed DP (the devices noise under secure aggregation).
"""

from __future__ import annotations

from ..dp.mechanism import clip_to_norm
from . import rows
from .sealed import SealedAggregator
from .sums import merge
from .tables import ShardTables


class UnboundedSum(RuntimeError):
    """A DP round's merged sum holds a contribution not weighted 1: its sensitivity is not S."""


def round_clip(tables: ShardTables, round_id: int) -> float | None:
    """S of a DP round (its stored plan); None for a round without privacy. StoreCorrupt for a
    plan fedge never wrote (rows.py)."""
    row = tables.conn.execute("SELECT privacy FROM rounds WHERE round_id = %s", (round_id,)).fetchone()
    plan = None if row is None else rows.plan(tables.where, round_id, row[0])
    return None if plan is None else plan.clip_norm


def bounded(delta: dict, clip: float | None) -> dict:
    """What a worker adds: the delta clipped to S in a DP round (float64, DpMean.add's), else as admitted."""
    return delta if clip is None else clip_to_norm(delta, clip)[0]


class ShardDpSums(SealedAggregator):
    """The Aggregator of a sharded DP round (module docstring): the workers' clipped sums plus
    the round's DpMean noise."""

    @property
    def released(self) -> bool:
        return self.inner.released

    def result(self):
        if not self.fed:
            total = merge(self.tables.seal(self.round_id, self.shards, self.shapes, self.check))
            if total.weight != total.count:
                raise UnboundedSum(f"round {self.round_id}: {total.count} clipped updates weigh {total.weight:g}, "
                                   "not 1 each")
            if total.count:
                self.inner.add_clipped_sum(total.sums, total.count)
            self.fed = True
        return self.inner.result()

    def carry(self) -> dict:
        return self.inner.carry()
