"""A sharded round under a robust aggregator: the workers validate and store, the leader aggregates.

A robust rule (median, trimmed mean, Krum, centered clipping, norm_bound, bucketing: robust/)
needs every update of the round at once, which a weighted sum cannot give. The workers do
not change: each still admits an update, stores its key, weight and payload in shard_updates
and adds it to its shard's partial sum, in one transaction with the Ack. At Aggregate the
leader's ShardReplay

    seals the round (tables.seal: no worker counts more; its partial sums are read too)
    reads every counted update of the round in (shard, seq) order (counted_updates)
    decodes each payload with admission's decoder (validation.decode_delta: the same dense
        float32 delta) and feeds it, with its stored weight, to `inner`
    returns inner.result()

where `inner` is the aggregator the single-machine coordinator builds for the round
(records.open_round: make_aggregator(config.aggregator, context), the robust state from the
committed ServerState.extra and the (seed, round) RNG), so its result and its `carry()` (the
norm history, the last aggregate) are the ones one machine would get from those updates in
that order. Memory at the leader is the rule's own: O(k x model) for the keep-all rules.

Why the workers keep their partial sums in this mode: the worker path stays one code path
(the other helpers of sharding/ touch it), a sum costs one O(model) row per burst, and the
sealed sums' count is an independent tally of what was counted: the leader refuses to
aggregate (ReplayMismatch) when the rows it read do not match it, rather than commit a
model made of a different set of updates than the workers acknowledged.
"""

from __future__ import annotations

from ..admission import check_stored_digest
from ..aggregate import UpdateMeta
from ..validation import decode_delta
from .rows import counted
from .sealed import SealedAggregator
from .tables import ShardTables

COUNTED_SQL = ("SELECT shard, seq, device_id, weight, payload, update_id, digest FROM shard_updates "
               "WHERE round_id = %s ORDER BY shard, seq")


class ReplayMismatch(RuntimeError):
    """The stored updates of a sealed round do not add up to the workers' partial sums."""


def counted_updates(tables: ShardTables, round_id: int) -> list[tuple[int, int, str, float, bytes]]:
    """(shard, seq, device id, weight, payload) of every update counted in the round, in (shard, seq) order;
    StoreCorrupt if a payload no longer has the digest admission accepted (admission.check_stored_digest;
    sharded rounds carry no SCAFFOLD control, so the digest is the payload's)."""
    rows = []
    for row in tables.conn.execute(COUNTED_SQL, (round_id,)).fetchall():
        s, q, d, w, payload, update_id, digest = counted(tables.where, round_id, row)  # StoreCorrupt: rows.py
        check_stored_digest(payload, b"", digest, f"{update_id} from {d} (round {round_id}, shard {s})")
        rows.append((s, q, d, w, payload))
    return rows


class ShardReplay(SealedAggregator):
    """The Aggregator of a sharded round whose rule is not a plain mean (module docstring)."""

    def result(self):
        if not self.fed:
            self._feed()
        return self.inner.result()

    def carry(self) -> dict:
        carry = getattr(self.inner, "carry", None)
        return {} if carry is None else carry()

    def _feed(self) -> None:
        # After the seal commits no add can commit for the round (tables.py), so the rows read
        # next are exactly the ones the sums hold.
        sealed = [part.count for part in self.tables.seal(self.round_id, self.shards, self.shapes, self.check)]
        rows = counted_updates(self.tables, self.round_id)
        # per shard the seal read: more than this leader's K where a process ran with another K (tables.seal);
        # and every shard a row names, so that a row on a shard with no sum at all is a mismatch too
        width = max([len(sealed), *(row[0] + 1 for row in rows)])
        sealed += [0] * (width - len(sealed))
        stored = [sum(row[0] == shard for row in rows) for shard in range(width)]
        if stored != sealed:
            raise ReplayMismatch(f"round {self.round_id}: stored updates per shard {stored}, the workers' sums "
                                 f"count {sealed}")
        for _shard, _seq, device_id, weight, payload in rows:
            self.inner.add(decode_delta(payload, self.shapes), UpdateMeta(device_id, float(weight)))
        self.fed = True
