"""Sharded ingest ([coordinator] shards = K): aggregator workers on shard topics, one leader.

    device --Update--> fedge/v1/shard/{k}/devices/{d}/update --> worker holding shard k's lease
        worker: validate (admission.admit, as the coordinator does) -> ONE PostgreSQL
                transaction: the update key + its weighted float64 delta added to the shard's
                partial sum for the round -> Ack
    leader: at round start assigns each selected device a shard (assign.py: its home shard
            crc32(id) mod K if that shard's lease is held, else the least-loaded live one;
            none live: no round, no_live_shard) and stores it with the round (shard_assignment);
            mid-round moves the uncounted devices of a shard without a live worker for
            shard_takeover_s to live shards and re-sends their tasks (the device sends the
            same update, same id, to the new shard); a worker counts a device only on the
            shard the stored assignment names (wrong_shard otherwise);
            round machine as today; progress (accepted devices) read from the shard tables;
            at Aggregate it seals the round (no worker counts more), then by the round's rule:
              mean         merges the K partial sums in shard index order (leader.ShardSums)
              central DP   the same merge of the workers' clipped sums, noised once by the
                           round's DpMean, charged in the commit (privacy.py)
              robust rule  reads every counted update from shard_updates in (shard, seq)
                           order into the rule one machine would build (replay.py)
            applies the server step and commits with epoch fencing.

config.py (what K allows, a device's home shard), assign.py (who serves which device, pure),
sums.py (the partial sums, pure), tables.py (the SQL), lease.py (a shard's lease and liveness),
worker.py, leader.py, replay.py, privacy.py.
Secure rounds run one SecAgg instance per shard group on the leader: groups.py, secure.py,
secure_dp.py (the workers take no part in them).
"""
