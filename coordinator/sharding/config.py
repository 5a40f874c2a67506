"""What sharded ingest supports, checked at config load, and a device's home shard.

A device's home shard is hash(device) mod K (crc32 of the id). The leader assigns each
selected device its home shard while that shard has a live worker, else another live shard
(assign.py), stores the assignment with the round, and names it in the device's task; a worker
refuses by name (wrong_shard) an update of a device the stored assignment does not give it.

What K allows besides the plain mean: any robust aggregator (the workers validate and store,
the leader replays the stored updates into the rule: replay.py), central DP-FedAvg (the
workers clip, the leader noises the merged sum once and charges the ledger: privacy.py), and
secure aggregation per shard group, with its distributed DP (each group's sum carries the full
noise by itself: groups.py, secure.py, secure_dp.py).

Refused for now, by name (ShardConflict.reason):
  shards_adaptive_clip   adaptive clipping's per-device clipped bit is not stored by the workers
  shards_scaffold        SCAFFOLD's control deltas are neither summed nor stored by the workers
  shards_async           async (FedBuff) mode keeps its own journal
  shards_postgres        the shard tables live in PostgreSQL: state_dsn is required
"""

from __future__ import annotations

import zlib

from fedge.edge_runtime.kernel.errors import ConfigError, NamedConfigError
from fedge.edge_runtime.kernel.protocol import MAX_SHARDS


class ShardConflict(NamedConfigError):
    """A setting refused by name (.reason)."""


def check_sharding(cfg) -> None:
    """Raise ShardConflict for a CoordinatorConfig whose `shards` it cannot run."""
    if not (0 <= cfg.shard_takeover_s <= 3600):
        raise ConfigError("shard_takeover_s must be in [0, 3600] seconds (how long a shard may be without a "
                          "live worker before the leader moves its devices)")
    if not 0 <= cfg.shards <= MAX_SHARDS:
        raise ConfigError(f"shards must be in [0, {MAX_SHARDS}] (0 = no shards: the coordinator ingests updates)")
    if cfg.shards == 0:
        return
    if cfg.metrics_port and cfg.metrics_port + cfg.shards > 65535:
        raise ConfigError(f"metrics_port: worker k serves on metrics_port + 1 + k, so it must be "
                          f"<= {65535 - cfg.shards}")
    dp = cfg.privacy
    conflicts = [
        (dp.enabled and dp.target_quantile > 0, "shards_adaptive_clip",
         "adaptive clipping is not built with shards: set privacy.target_quantile = 0 (a fixed clip_norm)"),
        (cfg.strategy == "scaffold", "shards_scaffold", "workers do not sum SCAFFOLD's control deltas"),
        (cfg.mode != "sync", "shards_async", "async mode ingests updates in the coordinator"),
        (not cfg.state_dsn, "shards_postgres", "the shard tables are in PostgreSQL: set state_dsn"),
    ]
    for bad, reason, message in conflicts:
        if bad:
            raise ShardConflict(reason, f"shards = {cfg.shards} ({reason}): {message}")  # the name, as AsyncConflict


def shard_for(device_id: str, shards: int) -> int:
    """The shard that counts `device_id`'s updates: crc32(id) mod shards (stable across processes,
    unlike Python's salted hash)."""
    return zlib.crc32(device_id.encode()) % shards
