"""What sharded ingest supports, checked at config load, and which shard serves a device.

A shard is hash(device) mod K (crc32 of the id): the leader and every worker compute it
alone, so nothing about the assignment has to be stored or sent between them, and a worker
can refuse by name (wrong_shard) an update that reached the wrong shard topic.

Refused for now, by name (ShardConflict.reason), because the workers keep only a weighted
float64 sum per shard, not the updates one by one:
  shards_aggregator   robust aggregators need every update at once (aggregator must be "mean")
  shards_privacy      central DP-FedAvg (clipping and noise of the sum) is not built per shard;
                      distributed DP under secure aggregation is (secure_dp.py)
  shards_scaffold     SCAFFOLD's control deltas are not summed by the workers
  shards_async        async (FedBuff) mode keeps its own journal
  shards_postgres     the shard tables live in PostgreSQL: state_dsn is required
"""

from __future__ import annotations

import zlib

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import MAX_SHARDS


class ShardConflict(ConfigError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_sharding(cfg) -> None:
    """Raise ShardConflict for a CoordinatorConfig whose `shards` it cannot run."""
    if not 0 <= cfg.shards <= MAX_SHARDS:
        raise ConfigError(f"shards must be in [0, {MAX_SHARDS}] (0 = no shards: the coordinator ingests updates)")
    if cfg.shards == 0:
        return
    if cfg.metrics_port and cfg.metrics_port + cfg.shards > 65535:
        raise ConfigError(f"metrics_port: worker k serves on metrics_port + 1 + k, so it must be "
                          f"<= {65535 - cfg.shards}")
    conflicts = [
        (cfg.aggregator != "mean", "shards_aggregator",
         f"workers keep a weighted sum per shard: set aggregator = 'mean' (not {cfg.aggregator!r})"),
        # secure aggregation runs per shard group, its distributed DP too (secure.py, secure_dp.py)
        (cfg.privacy.enabled and not cfg.secure_aggregation.enabled, "shards_privacy",
         "DP-FedAvg per shard group is not built"),
        (cfg.strategy == "scaffold", "shards_scaffold", "workers do not sum SCAFFOLD's control deltas"),
        (cfg.mode != "sync", "shards_async", "async mode ingests updates in the coordinator"),
        (not cfg.state_dsn, "shards_postgres", "the shard tables are in PostgreSQL: set state_dsn"),
    ]
    for bad, reason, message in conflicts:
        if bad:
            raise ShardConflict(reason, f"shards = {cfg.shards}: {message}")


def shard_for(device_id: str, shards: int) -> int:
    """The shard that counts `device_id`'s updates: crc32(id) mod shards (stable across processes,
    unlike Python's salted hash)."""
    return zlib.crc32(device_id.encode()) % shards
