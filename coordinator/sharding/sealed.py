"""The base of a sharded round's Aggregator that wraps the rule one machine builds (`inner`):
the workers count the updates, the leader reads them once, at result(), after sealing the
round (replay.py: every stored update into a robust rule; privacy.py: the merged clipped sum
into DP-FedAvg's mean)."""

from __future__ import annotations

from .tables import ShardTables


class SealedAggregator:
    def __init__(self, inner, tables: ShardTables, round_id: int, shards: int, shapes, check):
        self.inner, self.tables, self.round_id, self.shards, self.shapes, self.check = (
            inner, tables, round_id, shards, shapes, check)
        self.fed = False  # the sealed round was read into `inner`

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def screened_ids(self) -> list:
        """What a screening rule left out (robust/screening.py), once result() has run; else none."""
        return getattr(self.inner, "screened_ids", [])

    @property
    def sign_split_ids(self) -> list:
        """What the sign split left out (robust/sign_split.py), once result() has run; else none."""
        return getattr(self.inner, "sign_split_ids", [])

    @property
    def excluded_ids(self) -> list:
        """What the norm bound's exclusion left out (robust/norm_bound.py), once result() has run."""
        return getattr(self.inner, "excluded_ids", [])

    @property
    def weight_cut(self) -> list:
        """The claims the relative weight cap cut by more than NOTED_CUT (robust/norm_bound.py)."""
        return getattr(self.inner, "weight_cut", [])

    def add(self, delta, meta) -> None:
        raise TypeError("a sharded round's updates are counted by its workers, not the leader")
