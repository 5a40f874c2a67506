"""The shard tables in PostgreSQL (migrations 2 and 3 of pg_schema), and the transactions on them.

    shard_leases   shard, epoch, holder, since_wall     lease.py: a worker's fencing epoch
    shard_rounds   round_id, sealed                     sealed: the leader is aggregating; no more adds
    shard_updates  (round_id, device_id, update_id) PK, shard, seq, digest, weight, payload
                   every update a worker counted; seq = its place in its shard's sum
    shard_sums     (round_id, shard) PK, data, weight, count   sums.PartialSum of the shard
    shard_assignment  (round_id, device_id) PK, shard, counted
                   the leader's assignment (assign.py), written with the round's opening
                   (pg_store.py); counted: some worker counted the device, so it stays put

Why a device is counted by one shard only, even while the leader moves it: a worker's `count`
locks the burst's assignment rows (FOR UPDATE, in device order, so two workers cannot
deadlock), counts only the devices assigned to its own shard and marks them counted; the
leader's `reassign` moves only rows not counted, skipping rows a worker holds locked (SKIP
LOCKED: a stalled worker never blocks the leader; the row is retried at the next poll). So a
move either commits before the old shard's count, which then refuses the device (wrong_shard),
or after it, and sees `counted`. Behind that, the (round, device, update id) key refuses a
second add of one update on any shard. A round without assignment rows (opened before
migration 3) falls back to the home shard (config.shard_for).

Why the sum is exact: a worker's `count` transaction writes the keys and the new sum together
(a duplicate key adds nothing), under its lease row lock, and only while the round is open and
not sealed, holding the shard_rounds row FOR SHARE. The leader's `seal` updates that row
(waiting for the adds in flight), then reads the sums: every add either committed before the
seal, and is in what the leader reads, or sees `sealed` and is refused (its device gets a
stale_round Ack). Rows of a closed round stay (payloads too: what was counted can be
recomputed) until the leader prunes rounds older than its store's keep_key_rounds; those of
a round abandoned unread (privacy turned on at a restart) go at once (drop_counted). The
connection is autocommit with explicit transactions (pg_store.py says why).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass

from . import rows
from .assign import place
from .config import shard_for
from .lease import check_shard_epoch, live_shards
from .sums import PartialSum

log = logging.getLogger("fedge.coordinator")
COUNTED, DUPLICATE, WRONG_SHARD = "counted", "duplicate", "wrong_shard"  # count()'s verdict per item


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

        from ..pg_link import LinkedConnection, link_params
        from ..pg_schema import connect, migrate, redact

        self.where = redact(dsn)
        conn = connect(dsn, autocommit=True, **link_params(dsn))  # a cut link fails, not hangs
        migrate(conn, self.where)
        self.conn = LinkedConnection(conn, self.where)  # a broken link: StoreLinkLost, which stops the worker

    def close(self) -> None:
        self.conn.close()

    # ---------------------------------------------------------------- worker

    def open_round(self) -> tuple[int, int, dict[str, str]] | None:
        """(round_id, model_version, device -> task id) of the open round, or None; StoreCorrupt
        for a row fedge never wrote (rows.py)."""
        row = self.conn.execute("SELECT round_id, model_version, tasks FROM rounds WHERE status = 'open'").fetchone()
        return None if row is None else rows.open_round(self.where, row)

    def counted(self, round_id: int, devices: list[str]) -> dict[str, dict[tuple[str, int, str], str]]:
        """device -> {(device, round, update id): digest} of what these devices have counted in a round."""
        out: dict[str, dict] = {}
        rows = self.conn.execute("SELECT device_id, update_id, digest FROM shard_updates WHERE round_id = %s AND "
                                 "device_id = ANY(%s)", (round_id, devices)).fetchall() if devices else ()
        for device_id, uid, digest in rows:
            out.setdefault(device_id, {})[(device_id, round_id, uid)] = digest
        return out

    def declined(self, round_id: int, devices: list[str]) -> set[str]:
        """Which of these devices the leader stored a decline of in the round (PostgresStore's
        declines table): as on one machine, a device that declined is no longer expected."""
        rows = self.conn.execute("SELECT device_id FROM declines WHERE round_id = %s AND device_id = ANY(%s)",
                                 (round_id, devices)).fetchall() if devices else ()
        return {d for (d,) in rows}

    def counted_digest(self, device_id: str, round_id: int, update_id: str) -> str | None:
        row = self.conn.execute("SELECT digest FROM shard_updates WHERE round_id = %s AND device_id = %s AND "
                                "update_id = %s", (round_id, device_id, update_id)).fetchone()
        return None if row is None else row[0]

    def assigned(self, round_id: int, devices: list[str], shards: int) -> dict[str, int]:
        """device -> its shard in the round's stored assignment (the home shard where none is stored)."""
        rows = dict(self.conn.execute("SELECT device_id, shard FROM shard_assignment WHERE round_id = %s AND "
                                      "device_id = ANY(%s)", (round_id, devices)).fetchall()) if devices else {}
        return {d: rows.get(d, shard_for(d, shards)) for d in devices}

    def count(self, shard: int, epoch: int, round_id: int, items: list[Counted], shapes, shards: int) -> list[str]:
        """In one transaction: each item's key stored and weight * delta added to the shard's sum,
        in list order. Per item: COUNTED; DUPLICATE, its key was counted already (nothing added);
        WRONG_SHARD, the leader assigned its device elsewhere (nothing added). RoundClosed: too
        late for all of them."""
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
            partial = PartialSum() if row is None else rows.partial_sum(self.where, round_id, shard, row, shapes)
            devices = sorted({item.key[0] for item in items})
            held = dict(db.execute("SELECT device_id, shard FROM shard_assignment WHERE round_id = %s AND "
                                   "device_id = ANY(%s) ORDER BY device_id FOR UPDATE", (round_id, devices)).fetchall())
            mine = [d for d in devices if held.get(d, shard_for(d, shards)) == shard]
            db.execute("UPDATE shard_assignment SET counted = true WHERE round_id = %s AND device_id = ANY(%s)",
                       (round_id, mine))
            mine = set(mine)
            for item in items:
                if item.key[0] not in mine:
                    added.append(WRONG_SHARD)
                    continue
                stored = db.execute(
                    "INSERT INTO shard_updates (round_id, device_id, update_id, shard, seq, digest, weight, payload) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                    (round_id, *item.key, shard, partial.count, item.digest, item.weight, item.payload)).fetchone()
                added.append(DUPLICATE if stored is None else COUNTED)
                if stored is not None:
                    partial.add(item.delta, item.weight)
            if COUNTED in added:
                db.execute("INSERT INTO shard_sums (round_id, shard, data, weight, count) VALUES (%s, %s, %s, %s, %s) "
                           "ON CONFLICT (round_id, shard) DO UPDATE SET data = excluded.data, "
                           "weight = excluded.weight, count = excluded.count",
                           (round_id, shard, partial.to_bytes(), partial.weight, partial.count))
        return added

    # ---------------------------------------------------------------- leader

    def live_shards(self, shards: int) -> frozenset[int]:
        return live_shards(self.conn, shards)

    def assignment(self, round_id: int) -> dict[str, int]:
        """The round's stored device -> shard (empty: none stored)."""
        return dict(self.conn.execute("SELECT device_id, shard FROM shard_assignment WHERE round_id = %s",
                                      (round_id,)).fetchall())

    def reassign(self, round_id: int, dead: set[int], live: frozenset[int], check=None) -> dict[str, int]:
        """Move the devices on `dead` shards that no worker has counted onto `live` ones (assign.place,
        loads = the round's assignment); returns the moves. Rows a worker holds locked wait for the
        next call (module docstring). check(db): the leader's epoch check."""
        db = self.conn
        with db.transaction():
            if check is not None:
                check(db)
            stranded = [d for (d,) in db.execute(
                "SELECT device_id FROM shard_assignment WHERE round_id = %s AND shard = ANY(%s) AND NOT counted "
                "ORDER BY device_id FOR UPDATE SKIP LOCKED", (round_id, sorted(dead))).fetchall()]
            if not stranded:
                return {}
            loads = dict(db.execute("SELECT shard, count(*) FROM shard_assignment WHERE round_id = %s GROUP BY shard",
                                    (round_id,)).fetchall())
            moves = place(stranded, loads, live)
            db.execute("UPDATE shard_assignment AS a SET shard = m.shard FROM unnest(%s::text[], %s::int[]) "
                       "AS m(device_id, shard) WHERE a.round_id = %s AND a.device_id = m.device_id",
                       (list(moves), list(moves.values()), round_id))
        return moves

    def reporters(self, round_id: int) -> list[str]:
        """Devices with a counted update in the round, in no particular order."""
        return [r[0] for r in self.conn.execute("SELECT DISTINCT device_id FROM shard_updates WHERE round_id = %s",
                                                (round_id,)).fetchall()]

    @contextmanager
    def _sealing(self, round_id: int, check=None):
        """A transaction that first marks the round sealed: it waits for the counts in flight (their
        FOR SHARE of the row), and a count after it sees `sealed` (module docstring)."""
        db = self.conn
        with db.transaction():
            if check is not None:
                check(db)
            db.execute("INSERT INTO shard_rounds (round_id, sealed) VALUES (%s, true) "
                       "ON CONFLICT (round_id) DO UPDATE SET sealed = true", (round_id,))
            yield db

    def seal(self, round_id: int, shards: int, shapes, check=None) -> list[PartialSum]:
        """Stop every worker counting into the round, then its K partial sums in shard order.
        check(db): the leader's epoch check (leadership.check_epoch), inside the transaction."""
        with self._sealing(round_id, check) as db:
            sums = db.execute("SELECT shard, data, weight, count FROM shard_sums WHERE round_id = %s",
                              (round_id,)).fetchall()
        found = {shard: rows.partial_sum(self.where, round_id, shard, row, shapes) for shard, *row in sums}
        # Every shard's sum, not only those below this leader's K: K is not stored, and a leader
        # restarted mid-round with fewer shards would leave acked updates of the others out.
        beyond = sorted(k for k in found if k >= shards)
        if beyond:
            log.warning("round %d was counted on shard(s) %s, beyond this leader's shards = %d: a process ran "
                        "with another K; their sums are included", round_id, beyond, shards)
        return [found.get(k, PartialSum()) for k in range(max([shards, *(k + 1 for k in beyond)]))]

    def seal_counted(self, round_id: int, check=None) -> int:
        """Seal a round that will not be aggregated (restart.abandon_unplanned), then how many devices
        have an update counted in it: as in seal, a count in flight commits first and is in the
        number, and none starts after (the worker sees `sealed`: RoundClosed). Sealing twice is harmless."""
        with self._sealing(round_id, check) as db:
            (held,) = db.execute("SELECT count(DISTINCT device_id) FROM shard_updates WHERE round_id = %s",
                                 (round_id,)).fetchone()
        return held

    def drop_counted(self, round_id: int, check=None) -> None:
        """Delete a closed, unread round's counted updates (payloads with them) and partial sums now,
        not keep_key_rounds later at prune: they are updates no model was made from. A late
        resend of one is refused by the round's status (RoundClosed), so its key is not needed."""
        db = self.conn
        with db.transaction():
            if check is not None:
                check(db)
            for table in ("shard_updates", "shard_sums"):
                db.execute(f"DELETE FROM {table} WHERE round_id = %s", (round_id,))

    def prune(self, through_round: int, check=None) -> None:
        """Forget rounds <= through_round: their keys, payloads, sums and seals (the leader calls it
        with the round it closed minus keep_key_rounds, as RoundStore prunes its update keys)."""
        db = self.conn
        with db.transaction():
            if check is not None:
                check(db)
            for table in ("shard_updates", "shard_sums", "shard_rounds", "shard_assignment"):
                db.execute(f"DELETE FROM {table} WHERE round_id <= %s", (through_round,))
