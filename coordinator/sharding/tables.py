"""The shard tables in PostgreSQL (migration 2 of pg_schema), and the transactions on them.

    shard_leases   shard, epoch, holder, since_wall     lease.py: a worker's fencing epoch
    shard_rounds   round_id, sealed                     sealed: the leader is aggregating; no more adds
    shard_updates  (round_id, device_id, update_id) PK, shard, seq, digest, weight, payload
                   every update a worker counted; seq = its place in its shard's sum
    shard_sums     (round_id, shard) PK, data, weight, count   sums.PartialSum of the shard

Why the sum is exact: a worker's `count` transaction writes the keys and the new sum together
(a duplicate key adds nothing), under its lease row lock, and only while the round is open and
not sealed, holding the shard_rounds row FOR SHARE. The leader's `seal` updates that row
(waiting for the adds in flight), then reads the sums: every add either committed before the
seal, and is in what the leader reads, or sees `sealed` and is refused (its device gets a
stale_round Ack). Rows of a closed round stay (payloads too: what was counted can be
recomputed) until the leader prunes rounds older than its store's keep_key_rounds. The
connection is autocommit with explicit transactions (pg_store.py says why).
"""

from __future__ import annotations

from dataclasses import dataclass

from .lease import check_shard_epoch
from .sums import PartialSum


@dataclass(frozen=True)
class Counted:
    """One admitted update, as the shard tables count it."""

    key: tuple[str, str]  # (device id, update id); the round is the transaction's
    digest: str
    weight: float
    payload: bytes  # the Update's payload, kept so the sum can be recomputed (the tests' oracle)
    delta: dict  # dense, decoded by admission


class RoundClosed(Exception):
    """The round is no longer open, or the leader sealed it: nothing more is counted."""


class ShardTables:
    def __init__(self, dsn: str):
        import psycopg  # optional dependency, as in pg_store.py

        from ..pg_schema import migrate, redact

        self.where = redact(dsn)
        self.conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
        migrate(self.conn, self.where)

    def close(self) -> None:
        self.conn.close()

    # ---------------------------------------------------------------- worker

    def open_round(self):
        """(round_id, model_version, tasks json) of the open round, or None."""
        return self.conn.execute(
            "SELECT round_id, model_version, tasks FROM rounds WHERE status = 'open'").fetchone()

    def counted(self, round_id: int, devices: list[str]) -> dict[str, dict[tuple[str, int, str], str]]:
        """device -> {(device, round, update id): digest} of what these devices have counted in a round."""
        out: dict[str, dict] = {}
        rows = self.conn.execute("SELECT device_id, update_id, digest FROM shard_updates WHERE round_id = %s AND "
                                 "device_id = ANY(%s)", (round_id, devices)).fetchall() if devices else ()
        for device_id, uid, digest in rows:
            out.setdefault(device_id, {})[(device_id, round_id, uid)] = digest
        return out

    def counted_digest(self, device_id: str, round_id: int, update_id: str) -> str | None:
        row = self.conn.execute("SELECT digest FROM shard_updates WHERE round_id = %s AND device_id = %s AND "
                                "update_id = %s", (round_id, device_id, update_id)).fetchone()
        return None if row is None else row[0]

    def count(self, shard: int, epoch: int, round_id: int, items: list[Counted], shapes) -> list[bool]:
        """In one transaction: each item's key stored and weight * delta added to the shard's sum,
        in list order. Per item, False: its key was counted already (nothing added). RoundClosed:
        too late for all of them."""
        db, added = self.conn, []
        with db.transaction():
            check_shard_epoch(db, shard, epoch)
            status = db.execute("SELECT status FROM rounds WHERE round_id = %s", (round_id,)).fetchone()
            if status is None or status[0] != "open":
                raise RoundClosed(f"round {round_id} is not open")
            db.execute("INSERT INTO shard_rounds (round_id) VALUES (%s) ON CONFLICT DO NOTHING", (round_id,))
            (sealed,) = db.execute("SELECT sealed FROM shard_rounds WHERE round_id = %s FOR SHARE",
                                   (round_id,)).fetchone()
            if sealed:
                raise RoundClosed(f"round {round_id} is being aggregated")
            row = db.execute("SELECT data, weight, count FROM shard_sums WHERE round_id = %s AND shard = %s",
                             (round_id, shard)).fetchone()
            partial = PartialSum() if row is None else PartialSum.from_bytes(bytes(row[0]), shapes, row[1], row[2])
            for item in items:
                stored = db.execute(
                    "INSERT INTO shard_updates (round_id, device_id, update_id, shard, seq, digest, weight, payload) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                    (round_id, *item.key, shard, partial.count, item.digest, item.weight, item.payload)).fetchone()
                added.append(stored is not None)
                if stored is not None:
                    partial.add(item.delta, item.weight)
            if any(added):
                db.execute("INSERT INTO shard_sums (round_id, shard, data, weight, count) VALUES (%s, %s, %s, %s, %s) "
                           "ON CONFLICT (round_id, shard) DO UPDATE SET data = excluded.data, "
                           "weight = excluded.weight, count = excluded.count",
                           (round_id, shard, partial.to_bytes(), partial.weight, partial.count))
        return added

    # ---------------------------------------------------------------- leader

    def reporters(self, round_id: int) -> list[str]:
        """Devices with a counted update in the round, in no particular order."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT device_id FROM shard_updates WHERE round_id = %s",
                                                (round_id,)).fetchall()]

    def seal(self, round_id: int, shards: int, shapes, check=None) -> list[PartialSum]:
        """Stop every worker counting into the round, then its K partial sums in shard order.
        check(db): the leader's epoch check (leadership.check_epoch), inside the transaction."""
        db = self.conn
        with db.transaction():
            if check is not None:
                check(db)
            db.execute("INSERT INTO shard_rounds (round_id, sealed) VALUES (%s, true) "
                       "ON CONFLICT (round_id) DO UPDATE SET sealed = true", (round_id,))
            rows = db.execute("SELECT shard, data, weight, count FROM shard_sums WHERE round_id = %s",
                              (round_id,)).fetchall()
        found = {shard: PartialSum.from_bytes(bytes(data), shapes, w, n) for shard, data, w, n in rows}
        return [found.get(k, PartialSum()) for k in range(shards)]

    def prune(self, through_round: int, check=None) -> None:
        """Forget rounds <= through_round: their keys, payloads, sums and seals (the leader calls it
        with the round it closed minus keep_key_rounds, as RoundStore prunes its update keys)."""
        db = self.conn
        with db.transaction():
            if check is not None:
                check(db)
            for table in ("shard_updates", "shard_sums", "shard_rounds"):
                db.execute(f"DELETE FROM {table} WHERE round_id <= %s", (through_round,))
