"""Sharded ingest ([coordinator] shards = K): aggregator workers on shard topics, one leader.

    device --Update--> fedge/v1/shard/{k}/devices/{d}/update --> worker holding shard k's lease
        worker: validate (admission.admit, as the coordinator does) -> ONE PostgreSQL
                transaction: the update key + its weighted float64 delta added to the shard's
                partial sum for the round -> Ack
    leader: round machine as today; progress (accepted devices) read from the shard tables;
            at Aggregate it seals the round (no worker counts more), then by the round's rule:
              mean         merges the K partial sums in shard index order (leader.ShardSums)
              central DP   the same merge of the workers' clipped sums, noised once by the
                           round's DpMean, charged in the commit (privacy.py)
              robust rule  reads every counted update from shard_updates in (shard, seq)
                           order into the rule one machine would build (replay.py)
            applies the server step and commits with epoch fencing.

config.py (what K allows, who serves which device), sums.py (the partial sums, pure),
tables.py (the SQL), lease.py (a shard's lease), worker.py, leader.py, replay.py, privacy.py.
Secure rounds run one SecAgg instance per shard group on the leader: groups.py, secure.py,
secure_dp.py (the workers take no part in them).
"""
