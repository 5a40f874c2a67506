"""Sharded ingest ([coordinator] shards = K): aggregator workers on shard topics, one leader.

    device --Update--> fedge/v1/shard/{k}/devices/{d}/update --> worker holding shard k's lease
        worker: validate (admission.admit, as the coordinator does) -> ONE PostgreSQL
                transaction: the update key + its weighted float64 delta added to the shard's
                partial sum for the round -> Ack
    leader: round machine as today; progress (accepted devices) read from the shard tables;
            at Aggregate it seals the round (no worker counts more), merges the K partial sums in
            shard index order, applies the server step and commits with epoch fencing.

config.py (what K allows, who serves which device), sums.py (the partial sums, pure),
tables.py (the SQL), lease.py (a shard's lease), worker.py, leader.py. Secure rounds run one
SecAgg instance per shard group on the leader: groups.py, secure.py, secure_dp.py.
"""
