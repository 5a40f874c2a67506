"""The Store's SQL, written once for SQLite (store.RoundStore) and PostgreSQL (pg_store.PostgresStore).

Both databases run these statements as they are: `?` placeholders (PostgresStore turns them
into psycopg's `%s`), upserts spelled `ON CONFLICT` (SQLite >= 3.24), and explicit column lists.
A subclass brings the connection and the transaction:

    _db            has execute(sql, params) -> a cursor (fetchone, fetchall, iteration, rowcount)
    _tx()          a context manager: one write transaction that yields a connection like _db
                   and rolls back on any exception
    _insert_order  the column that orders a version's tensors as they were inserted
    setting        the config key that names this store, for messages

So the semantics (one transaction per write, the commit point, pruning, the refusals) are
one piece of code, and the crash argument in store.py holds for both.
"""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np

from fedge.edge_runtime.kernel.errors import ConfigError

from . import store_rows
from .record_rows import checked_record
from .row_check import checked_json, checked_row
from .stored import OPEN_ROUND_SECRETS, StoredDecline, StoredDevice, StoredRound, StoredUpdate, closed_plan
from .strategies import ServerState

REFRESH_SINCE_KEY = "last_seen_refresh_since"  # meta: the wall time this build's service first ran (refresh_began)


def check_keeps(keep_versions: int = 1, keep_key_rounds: int = 1, keep_rounds: int = 0) -> None:
    """ValueError for a store's pruning setting it cannot work with (CoordinatorConfig says why in ConfigErrors)."""
    if keep_versions < 1 or keep_key_rounds < 1:
        raise ValueError("keep_versions and keep_key_rounds must be >= 1")
    if keep_rounds < 0:
        raise ValueError(f"keep_rounds must be 0 (keep every closed round) or >= 1, not {keep_rounds}")


class SqlStore:
    path: object
    keep_versions: int
    keep_key_rounds: int
    keep_rounds: int = 0  # closed rounds whose rows and evaluation records are kept; 0 = all (_prune_rounds)
    setting: str = "state_db"
    _insert_order: str = "rowid"

    def _tx(self):
        raise NotImplementedError

    def write_deadline(self, seconds: float):
        """The Store's: the writes within end after `seconds` where the store can bound them
        (PostgresStore); SQLite's are local and keep their busy timeout."""
        return nullcontext()

    # ------------------------------------------------------------------ model

    def bind(self, model_id: str, strategy: str) -> None:
        """Claim the database for one model and strategy; ConfigError if it holds another's state."""
        with self._tx() as db:
            for key, value in (("model_id", model_id), ("strategy", strategy)):
                row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
                if row is None:
                    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
                elif row[0] != value:
                    raise ConfigError(f"{self.path} holds state for {key} {row[0]!r}, not {value!r}; "
                                      f"point {self.setting} elsewhere to start afresh")

    def load_state(self) -> ServerState | None:
        """The latest committed ServerState, bit-exact; None for a fresh database. StoreCorrupt
        for a row fedge never wrote (store_rows.py)."""
        row = self._db.execute("SELECT version, extra_groups FROM models ORDER BY version DESC LIMIT 1").fetchone()
        if row is None:
            return None
        version, groups = checked_row(self.path, "models", store_rows.MODEL_COLUMNS, tuple(row), key="latest")
        params: dict[str, np.ndarray] = {}
        extra: dict[str, dict[str, np.ndarray]] = {g: {} for g in store_rows.extra_groups(self.path, version, groups)}
        for row in self._db.execute("SELECT kind, grp, name, dtype, shape, data FROM tensors WHERE version = ? "
                                    f"ORDER BY {self._insert_order}", (version,)):
            kind, grp, name, array = store_rows.tensor(self.path, version, list(extra), row)
            (params if kind == "params" else extra[grp])[name] = array
        return ServerState(version=version, params=params, extra=extra)

    def save_initial_state(self, state: ServerState) -> None:
        """Store the starting model (version 0 or wherever it starts) in a fresh database."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM models LIMIT 1").fetchone() is None:
                self._insert_state(db, state, None, 0.0)

    def next_round_id(self) -> int:
        """The open round's id if one is open, else one past the last round."""
        (last,) = self._db.execute("SELECT COALESCE(MAX(round_id), 0) FROM rounds").fetchone()
        is_open = self._db.execute("SELECT 1 FROM rounds WHERE round_id = ? AND status = 'open'", (last,)).fetchone()
        return last if is_open else last + 1

    # ------------------------------------------------------------------ rounds

    def open_round(self, rnd: StoredRound) -> None:
        with self._tx() as db:
            self._insert_round(db, rnd)

    def _insert_round(self, db, rnd: StoredRound) -> None:
        db.execute("INSERT INTO rounds (round_id, status, model_version, selected, tasks, target, quorum, "
                   "started_wall, deadline_wall, privacy) VALUES (?, 'open', ?, ?, ?, ?, ?, ?, ?, ?)",
                   (rnd.round_id, rnd.model_version, json.dumps(list(rnd.selected)), json.dumps(rnd.tasks),
                    rnd.target, rnd.quorum, rnd.started_wall, rnd.deadline_wall,
                    None if rnd.privacy is None else json.dumps(rnd.privacy)))

    def load_open_round(self) -> StoredRound | None:
        """The open round as begin_round wrote it, with its events; StoreCorrupt for a row fedge
        never wrote (store_rows.py)."""
        row = self._db.execute("SELECT round_id, model_version, selected, tasks, target, quorum, started_wall, "
                               "deadline_wall, privacy FROM rounds WHERE status = 'open'").fetchone()
        if row is None:
            return None
        round_id = row[0]
        updates = self._open_round_updates(round_id)
        declines = [StoredDecline(*checked_row(self.path, "declines", store_rows.DECLINE_COLUMNS, tuple(d),
                                               key=f"round {round_id}"))
                    for d in self._db.execute("SELECT seq, device_id, reason FROM declines WHERE round_id = ?",
                                              (round_id,))]
        return store_rows.open_round(self.path, row[:8], row[8], updates, declines)

    def _open_round_updates(self, round_id: int) -> list[StoredUpdate]:
        """The open round's accepted updates with their payloads (RoundStore: from its payload log)."""
        return [store_rows.update(self.path, round_id, row) for row in self._db.execute(
            "SELECT seq, device_id, update_id, digest, num_examples, payload, control, reported_norm "
            "FROM updates WHERE round_id = ?", (round_id,))]

    def add_update(self, round_id: int, *updates: StoredUpdate) -> None:
        """Durably record accepted updates, in one transaction (group_commit.py); before their Acks."""
        with self._tx() as db:
            self._require_open(db, round_id)
            for update in updates:
                db.execute("INSERT INTO updates (device_id, round_id, update_id, digest, seq, num_examples, "
                           "payload, control, reported_norm) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (update.device_id, round_id, update.update_id, update.digest, update.seq,
                            update.num_examples, update.payload, update.control or None, update.reported_norm))

    def add_decline(self, round_id: int, decline: StoredDecline) -> None:
        with self._tx() as db:
            self._require_open(db, round_id)
            db.execute("INSERT INTO declines (round_id, device_id, seq, reason) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT DO NOTHING", (round_id, decline.device_id, decline.seq, decline.reason))

    def counted_digest(self, device_id: str, round_id: int, update_id: str) -> str | None:
        """Digest of an update counted under this key (in any kept round), or None."""
        row = self._db.execute("SELECT digest FROM updates WHERE device_id = ? AND round_id = ? AND update_id = ?",
                               (device_id, round_id, update_id)).fetchone()
        return row[0] if row else None

    def commit_round(self, round_id: int, state: ServerState, record: dict, closed_wall: float,
                     charge: dict | None = None) -> None:
        """The new model version, strategy state, round record and privacy charge, in one transaction."""
        with self._tx() as db:
            forgot = self._close(db, round_id, "committed", record, closed_wall, charge)
            (latest,) = db.execute("SELECT MAX(version) FROM models").fetchone()
            if latest is not None and state.version != latest + 1:
                raise ValueError(f"round {round_id} commits version {state.version}, but the store holds {latest}")
            self._insert_state(db, state, round_id, closed_wall)
            db.execute("DELETE FROM tensors WHERE version <= ?", (state.version - self.keep_versions,))
            db.execute("DELETE FROM models WHERE version <= ?", (state.version - self.keep_versions,))
        self._closed(round_id, forgot)

    def abandon_round(self, round_id: int, record: dict, closed_wall: float, charge: dict | None = None) -> None:
        with self._tx() as db:
            forgot = self._close(db, round_id, "abandoned", record, closed_wall, charge)
        self._closed(round_id, forgot)

    def charge_round(self, round_id: int, charge: dict) -> None:
        """The open round's privacy charge, before its close (a secure round whose unmasking began:
        secagg/shell.py); its close then passes none, and the primary key refuses a second."""
        with self._tx() as db:
            self._require_open(db, round_id)
            if db.execute("SELECT 1 FROM privacy_ledger WHERE round_id = ?", (round_id,)).fetchone() is not None:
                raise ValueError(f"round {round_id} is charged already in {self.path}")
            db.execute("INSERT INTO privacy_ledger (round_id, charge) VALUES (?, ?)",
                       (round_id, json.dumps(closed_plan(charge))))

    def privacy_ledger(self) -> list[dict]:
        """The charged rounds' plans (dp RoundPlan JSON), oldest first."""
        return [json.loads(c) for (c,) in self._db.execute("SELECT charge FROM privacy_ledger ORDER BY round_id")]

    def round_records(self) -> list[dict]:
        """Records of closed rounds, oldest first; StoreCorrupt for one fedge never wrote (record_rows.py)."""
        from .records import RoundRecord  # here: records.py imports the store (through admission.py)

        return [checked_record(self.path, "rounds", r, RoundRecord, f"round {i!r:.20}") for i, r in self._db.execute(
            "SELECT round_id, record FROM rounds WHERE status != 'open' ORDER BY round_id")]

    def add_evaluation(self, round_id: int, record: dict) -> None:
        """A finished federated evaluation (coordinator/evaluation.py)."""
        with self._tx() as db:
            db.execute("INSERT INTO evaluations (round_id, record) VALUES (?, ?)", (round_id, json.dumps(record)))

    def evaluation_records(self) -> list[dict]:
        """StoreCorrupt for a record fedge never wrote (record_rows.py)."""
        from .evaluation import EvalRecord  # here, as RoundRecord in round_records

        return [checked_record(self.path, "evaluations", r, EvalRecord, f"evaluation {s!r:.20}", ("per_device",))
                for s, r in self._db.execute("SELECT seq, record FROM evaluations ORDER BY seq")]

    # ------------------------------------------------------------------ devices

    def save_device(self, device: StoredDevice) -> None:
        with self._tx() as db:
            self._upsert_device(db, device)

    @staticmethod
    def _upsert_device(db, device: StoredDevice) -> None:
        db.execute("INSERT INTO devices (device_id, last_seen_wall, eligible, reason, num_examples) "
                   "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
                   "last_seen_wall = excluded.last_seen_wall, eligible = excluded.eligible, "
                   "reason = excluded.reason, num_examples = excluded.num_examples",
                   (device.device_id, device.last_seen_wall, int(device.eligible), device.reason,
                    device.num_examples))

    def save_devices(self, devices: list[StoredDevice]) -> None:
        """Many rows in one transaction (the registry's batched last-seen refreshes)."""
        with self._tx() as db:
            for device in devices:
                self._upsert_device(db, device)

    def refresh_began(self, wall: float) -> float:
        """When this build's service first ran on the store (meta row `last_seen_refresh_since`,
        written once); the stored time. forget-devices refuses until every row had time to be refreshed."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = ?", (REFRESH_SINCE_KEY,)).fetchone()
            if row is None:
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (REFRESH_SINCE_KEY, repr(float(wall))))
                return float(wall)
        return float(checked_json(self.path, "meta", "value", row[0], (int, float), REFRESH_SINCE_KEY, "a number"))

    def load_devices(self) -> list[StoredDevice]:
        """StoreCorrupt for a row fedge never wrote (store_rows.py)."""
        return [store_rows.device(self.path, row) for row in self._db.execute(
            "SELECT device_id, last_seen_wall, eligible, reason, num_examples FROM devices ORDER BY device_id")]

    # ------------------------------------------------------------------ helpers

    def _require_open(self, db, round_id: int) -> None:
        if db.execute("SELECT 1 FROM rounds WHERE round_id = ? AND status = 'open'", (round_id,)).fetchone() is None:
            raise ValueError(f"round {round_id} is not open in {self.path}")

    def _close(self, db, round_id: int, status: str, record: dict, closed_wall: float, charge: dict | None) -> bool:
        """Close the open round in transaction `db`; True when its plan held a secret it now forgot
        (stored.closed_plan: the noise key served the open round's replay only)."""
        row = db.execute("SELECT privacy FROM rounds WHERE round_id = ? AND status = 'open'", (round_id,)).fetchone()
        if row is None:
            raise ValueError(f"round {round_id} is not open in {self.path}; it cannot be closed twice")
        plan = _plan_or_none(row[0])
        closed = row[0] if plan is None else json.dumps(closed_plan(plan))
        db.execute("UPDATE rounds SET status = ?, closed_wall = ?, record = ?, privacy = ? "
                   "WHERE round_id = ? AND status = 'open'",
                   (status, closed_wall, json.dumps(record), closed, round_id))
        if charge is not None:  # a second charge of one round is refused by name (the primary key would too)
            if db.execute("SELECT 1 FROM privacy_ledger WHERE round_id = ?", (round_id,)).fetchone() is not None:
                raise ValueError(f"round {round_id} is charged already in {self.path}")
            db.execute("INSERT INTO privacy_ledger (round_id, charge) VALUES (?, ?)",
                       (round_id, json.dumps(closed_plan(charge))))
        # Payloads and declines served the replay only; the keys stay for late duplicates.
        db.execute("UPDATE updates SET payload = NULL, control = NULL WHERE round_id = ?", (round_id,))
        db.execute("DELETE FROM declines WHERE round_id = ?", (round_id,))
        db.execute("DELETE FROM updates WHERE round_id <= ?", (round_id - self.keep_key_rounds,))
        self._prune_rounds(db, round_id)
        return plan is not None and any(plan.get(k) for k in OPEN_ROUND_SECRETS)

    def _prune_rounds(self, db, round_id: int) -> None:
        """keep_rounds > 0: the rows of closed rounds up to round_id - keep_rounds (round_id: the one
        closing now; ids follow one another, so the latest keep_rounds closed rounds stay) and the
        evaluations of those rounds, deleted in the closing transaction `db`: a crash leaves all or
        none of it. Never the open round, the privacy ledger (the budget spent must survive), the
        update keys (keep_key_rounds: dedupe) or the models (keep_versions). Both deletes walk only
        what they delete: the rounds' key, and evaluations in seq order, which is their rounds'
        order (one evaluation runs at a time, after its round's commit), up to the first one kept."""
        if self.keep_rounds <= 0:
            return
        cutoff = round_id - self.keep_rounds
        db.execute("DELETE FROM rounds WHERE status <> 'open' AND round_id <= ?", (cutoff,))
        db.execute("DELETE FROM evaluations WHERE seq < COALESCE((SELECT seq FROM evaluations WHERE round_id > ? "
                   "ORDER BY seq LIMIT 1), (SELECT MAX(seq) FROM evaluations) + 1)", (cutoff,))

    def _forget_closed_keys(self, db) -> int:
        """Closed rounds' noise keys that a build before the close forgot them left in the store
        (rounds.privacy, privacy_ledger), rewritten without them in transaction `db`, when the
        store opens; the rows changed. The open round keeps its key (its replay needs it)."""
        changed = 0
        for table, column, where in (("rounds", "privacy", "status <> 'open' AND "), ("privacy_ledger", "charge", "")):
            rows = db.execute(f"SELECT round_id, {column} FROM {table} WHERE {where}{column} LIKE ?",
                              ("%noise_key%",)).fetchall()
            for round_id, text in rows:
                plan = _plan_or_none(text)
                if plan is not None and any(k in plan for k in OPEN_ROUND_SECRETS):
                    db.execute(f"UPDATE {table} SET {column} = ? WHERE round_id = ?",
                               (json.dumps(closed_plan(plan)), round_id))
                    changed += 1
        return changed

    def _closed(self, round_id: int, forgot: bool) -> None:
        """After a close's transaction (RoundStore: drop its payload log, scrub the forgotten key's bytes)."""

    @staticmethod
    def _insert_state(db, state: ServerState, round_id: int | None, wall: float) -> None:
        db.execute("INSERT INTO models (version, round_id, created_wall, extra_groups) VALUES (?, ?, ?, ?)",
                   (state.version, round_id, wall, json.dumps(list(state.extra))))
        rows = [(state.version, "params", "", name, value) for name, value in state.params.items()]
        rows += [(state.version, "extra", grp, name, value) for grp, arrays in state.extra.items()
                 for name, value in arrays.items()]
        for version, kind, grp, name, value in rows:
            array = np.asarray(value)  # not ascontiguousarray: it turns 0-d arrays into shape (1,)
            if array.dtype.hasobject:
                raise ValueError(f"{kind} {grp}/{name}: object arrays cannot be stored")
            db.execute("INSERT INTO tensors (version, kind, grp, name, dtype, shape, data) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (version, kind, grp, name, array.dtype.str, json.dumps(list(array.shape)),
                        array.tobytes(order="C")))


def _plan_or_none(text) -> dict | None:
    """The open round's stored plan as a dict, or None (no plan, or text that is none: kept as it is)."""
    try:
        plan = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
    return plan if isinstance(plan, dict) else None
