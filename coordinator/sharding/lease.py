"""A worker's lease on one shard: PostgresLease's advisory lock and epoch, per shard.

The lock key is SHARD_LOCK_BASE + shard, and the epoch lives in shard_leases[shard]; every
write transaction of the worker locks that row and refuses with FencedOut unless the epoch is
its own (check_shard_epoch), so a worker that stalled past a takeover cannot add to the sum
any more, exactly as a deposed leader cannot commit (leadership.py).

A shard is live while its lock is held (live_shards, read from pg_locks). The lock, not a
heartbeat column: it is the very thing a spare takes over with, so the leader's view of
"dead" and a spare's chance to take the shard are one fact; it ends with the worker's session
(at once on exit or kill, after LEASE_KEEPALIVES on a cut link), needs no writer thread and no
clock threshold, and a heartbeat could say "alive" for a session PostgreSQL already dropped.
"""

from __future__ import annotations

import time

from ..leadership import FencedOut, PostgresLease

SHARD_LOCK_BASE = 0x66656467650000  # + shard; far from LEADER_LOCK_KEY and the migration lock


class ShardLease(PostgresLease):
    role = "shard worker"

    def __init__(self, dsn: str, shard: int, *, holder: str = ""):
        self.shard = shard
        super().__init__(dsn, key=SHARD_LOCK_BASE + shard, holder=holder)

    def _bump(self) -> int:
        (epoch,) = self._conn.execute(
            "INSERT INTO shard_leases (shard, epoch, holder, since_wall) VALUES (%s, 1, %s, %s) "
            "ON CONFLICT (shard) DO UPDATE SET epoch = shard_leases.epoch + 1, holder = excluded.holder, "
            "since_wall = excluded.since_wall RETURNING epoch", (self.shard, self.holder, time.time())).fetchone()
        return epoch

    def _current(self):
        return self._conn.execute("SELECT epoch FROM shard_leases WHERE shard = %s", (self.shard,)).fetchone()


def check_shard_epoch(db, shard: int, epoch: int) -> None:
    """Inside a write transaction: lock the shard's lease row; refuse unless `epoch` is current."""
    row = db.execute("SELECT epoch FROM shard_leases WHERE shard = %s FOR UPDATE", (shard,)).fetchone()
    if row is None or row[0] != epoch:
        raise FencedOut(f"shard {shard}: epoch is {row and row[0]}, this worker's is {epoch}; another worker took it")


def live_shards(db, shards: int) -> frozenset[int]:
    """The shards in [0, shards) whose lease lock some session holds in this database now.
    pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low), objsubid 1."""
    rows = db.execute(
        "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).fetchall()
    return frozenset(key - SHARD_LOCK_BASE for (key,) in rows if 0 <= key - SHARD_LOCK_BASE < shards)
