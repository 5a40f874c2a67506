"""The oracle for sharded rounds: the committed model from what the store says the workers counted.

A plain loop, not coordinator/sharding/sums.py: per shard, in acceptance (seq) order, sum
weight * float64(delta) from zeros; add the shards' sums in index order; divide once; cast to
float32; apply the strategy's server step to the previous model.
"""

from __future__ import annotations

import numpy as np

from fedge.coordinator.strategies import AggregateInput, ServerState
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.update_codec import decode_tensors

SQL = "SELECT weight, payload FROM shard_updates WHERE round_id = %s AND shard = %s ORDER BY seq"


def reference(rows, shards: int, round_id: int, old: ServerState, strategy, population: int):
    """rows(sql, *args) -> list of tuples; returns (the new params, how many updates were counted)."""
    sums, weight, count = {}, 0.0, 0
    for shard in range(shards):
        acc = {k: np.zeros(np.shape(v), np.float64) for k, v in old.params.items()}
        for w, payload in rows(SQL, round_id, shard):
            delta = decompress_update(decode_tensors(bytes(payload)))
            for k in acc:
                acc[k] += delta[k].astype(np.float64) * w
            weight, count = weight + w, count + 1
        for k in acc:
            sums[k] = sums[k] + acc[k] if k in sums else acc[k]
    mean = {k: (v / weight).astype(np.float32) for k, v in sums.items()}
    return strategy.apply(old, AggregateInput(mean, count, population, None)).params, count
