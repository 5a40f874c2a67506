"""The oracle for sharded rounds: the committed model from what the store says the workers counted.

A plain loop, not coordinator/sharding/sums.py: per shard, in acceptance (seq) order, sum
weight * float64(delta) from zeros; add the shards' sums in index order; divide once; cast to
float32; apply the strategy's server step to the previous model. robust_reference: the
single-machine robust aggregator fed the stored updates in (shard, seq) order; dp_reference:
the clipped per-shard sums, merged, plus the seeded Gaussian noise once.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from fedge.coordinator.strategies import AggregateInput, ServerState
from fedge.edge_runtime.kernel.compress import decompress_update
from fedge.edge_runtime.kernel.update_codec import decode_tensors
from tests.coordinator.fleet import noise_entropy

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


ROWS_SQL = "SELECT device_id, weight, payload FROM shard_updates WHERE round_id = %s ORDER BY shard, seq"


def robust_reference(rows, round_id: int, old: ServerState, strategy, population: int, config):
    """A robust round: the single-machine aggregator (the registry's, as one coordinator builds it
    for the round: robust settings, committed extra, (seed, round) RNG) fed the stored updates in
    (shard, seq) order, decoded by the codec directly. Returns (the new ServerState, count)."""
    from fedge.coordinator.aggregate import AggregatorContext, UpdateMeta, make_aggregator

    agg = make_aggregator(config.aggregator, AggregatorContext(round_id, config.seed, config.robust, old.extra))
    stored = rows(ROWS_SQL, round_id)
    for device_id, w, payload in stored:
        agg.add(decompress_update(decode_tensors(bytes(payload))), UpdateMeta(device_id, float(w)))
    new = strategy.apply(old, AggregateInput(agg.result(), len(stored), population, None))
    carry = getattr(agg, "carry", None)
    if carry is not None:
        new = replace(new, extra={**new.extra, **carry()})
    return new, len(stored)


def dp_reference(rows, shards: int, round_id: int, old: ServerState, strategy, population: int, plan: dict,
                 seed: int):
    """A central-DP round, plain loops: per shard in seq order, each stored delta scaled by
    min(1, S / ||delta||) and summed in float64; the shards added in index order; N(0, (zS)^2)
    per coordinate drawn from (the plan's noise key, seed, round) in sorted tensor-name order (what the
    mechanism draws: the sum holds the tensors in that order); divided by W; float32. Returns
    (the new params, the merged clipped sum, count)."""
    clip, z, cohort = plan["clip_norm"], plan["noise_multiplier"], plan["expected_cohort"]
    sums, count = {}, 0
    for shard in range(shards):
        acc = {k: np.zeros(np.shape(v), np.float64) for k, v in old.params.items()}
        for w, payload in rows(SQL, round_id, shard):
            assert w == 1.0  # privacy weighs every device equally
            delta = decompress_update(decode_tensors(bytes(payload)))
            norm = float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in delta.values())))
            scale = 1.0 if norm <= clip else clip / norm
            for k in acc:
                acc[k] += delta[k].astype(np.float64) * scale
            count += 1
        for k in acc:
            sums[k] = sums[k] + acc[k] if k in sums else acc[k]
    rng = np.random.default_rng(noise_entropy(plan.get("noise_key", ""), seed, round_id))
    noise = {k: rng.normal(0.0, z * clip, size=np.shape(sums[k])) for k in sorted(sums)}
    mean = {k: ((sums[k] + noise[k]) / cohort).astype(np.float32) for k in sums}
    return strategy.apply(old, AggregateInput(mean, count, population, None)).params, sums, count
