"""`fedge coordinator forget-devices --config C --unseen-days N [--dry-run]`: drop from the registry
the devices not seen for N days, so ids that churn (a board re-flashed under a new name) stop
holding places under [coordinator] max_devices (registry_cap.py evicts nothing by itself).

What it deletes: rows of the state_db's `devices` table, fedge's own registry, and nothing
else (with state_dsn, that database's `devices` table: forget_devices_pg.py, which says how the
leader's lock and epoch stand in for the flock below), in one transaction (a crash leaves every
row or none of them gone). A forgotten device that checks in again is registered as new and
counts against the cap again; it loses nothing it keeps itself (its personal head, its pending
updates and its control variate live on the device).

"Not seen for N days": its stored last_seen_wall is more than N days plus
registry.refresh_lag_s(max(max_devices, the devices registered)) old (6 h plus the minutes a
full registry's refreshes take to be written: 6 h 21 min for the default million; a registry
restored over a lowered max_devices keeps every device, hence the larger of the two). While a
device checks in, the store's time lags the truth by less than that (registry.py), so no device
seen in the last N days is forgotten. A build before that one wrote the time only when a
device's facts changed, so the service records in the store's meta table when it first ran on this build
(last_seen_refresh_since, sql_store.py) and the command refuses (`too_soon`) until N days plus
that lag have passed since; the devices' pace (up to [agent] max_pace_s, a day) must also be
shorter than N days, which is the operator's to know.

Paths: a relative state_db resolves against the current folder, as the service's does against
its own (the systemd unit's WorkingDirectory, /var/lib/fedge-coordinator): run the command
there, as the service's user (`sudo -u fedge`). It prints the absolute path it acted on.

What it keeps, however old its row:
* every device the open round selected: it holds a task, or its update or decline is stored
  and the restart replays it (store_rows.open_round);
* async mode: every device with a task in flight (async_tasks) or an update in the open
  buffer (async_updates of the open round).

What it refuses, by name (ForgetRefused.reason), before anything is written:
* `bad_unseen_days`: N not a number in (0, MAX_UNSEEN_DAYS];
* `no_state_db`: a config without state_db or state_dsn keeps its registry in memory only;
* `no_state_file`: state_db names no file (opening one would create it);
* `not_fedge_state`: a file that holds no fedge schema row of this build's version (an empty
  file or a database with no tables included);
* `too_soon`: this build's service has not refreshed the stored times for N days plus the lag
  (or never ran on the file);
* `read_only`: this user may read the file but not write it: run it as the service's user;
* `scaffold`: SCAFFOLD's control step uses N = the devices the registry holds, and its server
  control c = (1/N) sum of every device's c_i, which the server never sees one by one: a
  forgotten device's c_i stays in c while N drops, and every later step is scaled for a
  population that no longer matches its sum (strategies/scaffold.py). A SCAFFOLD fleet raises
  max_devices instead.
And while the service runs: ServiceUnavailable (exit 1). The running coordinator holds the
registry in memory and writes a device's row only when it changed or every 6 h, so rows
deleted under it would come back or be missed, and its count for the cap would not move until a restart. The
command takes the same exclusive flock on `<state_db>.lock` that keeps a second coordinator off
the file (state_lock.py), for the whole transaction: a service starting meanwhile is refused
and its supervisor retries. `--dry-run` writes no row, takes no lock (a preview with the
service up reads rows up to the lag behind its memory) and opens the file read-only; on a
stopped service's file SQLite still makes the empty `-wal` and `-shm` files a WAL reader needs
(beside the file, if the folder lets this user), which the service uses as its own. A lock file
the command creates (the service never ran there, or it was removed) is given the state_db's
owner, so the service's user can open it afterwards when the command ran as root.

What it never touches: the privacy ledger (charged per round, not per device: the budget
spent stays spent), the update keys of closed rounds (a late re-publish is still acked as a
duplicate; keep_key_rounds prunes them), and anything `fedge provision` wrote: broker
passwords, ACL entries, certificates and secure-aggregation identities are files the operator
placed and edits (revoke a device's login there; fedge does not delete files it did not create).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from fedge.edge_runtime.kernel.errors import NamedConfigError, ServiceUnavailable

from .limits import MAX_FLEET
from .registry import refresh_lag_s
from .row_check import checked_json
from .sql_store import REFRESH_SINCE_KEY
from .sqlite_tx import immediate_transaction
from .state_file import damaged
from .state_lock import state_db_lock
from .store import SCHEMA_VERSION, holds_fedge_schema

log = logging.getLogger("fedge.coordinator")

DAY_S = 86_400.0
# A hundred years: past the age of any wall clock's epoch, so a larger N matches no row and can only be a typo.
MAX_UNSEEN_DAYS = 36_500.0
_BUSY_MS = 5000  # as the store's: a reader of the file (a dry run, `fedge coordinator privacy`) holds it briefly
_SQLITE_READONLY = 8  # SQLite's primary result code (the low byte of an extended one)


class ForgetRefused(NamedConfigError):
    """forget-devices will not run; .reason names why (module docstring)."""


@dataclass(frozen=True)
class Where:
    """What the command acts on, for messages: `state_db <absolute path>` or `state_dsn <DSN, no password>`."""

    setting: str  # "state_db" or "state_dsn"
    name: str

    def __str__(self) -> str:
        return f"{self.setting} {self.name}"


@dataclass(frozen=True)
class ForgetResult:
    state_db: str  # the absolute path acted on; with setting state_dsn, the DSN without its password
    cutoff_wall: float  # rows last seen before this were old enough
    registered: int  # rows before
    forgotten: tuple[str, ...]  # sorted; with dry_run, the ones that would be
    kept: dict[str, str] = field(default_factory=dict)  # old enough, but kept: device id -> why
    dry_run: bool = False
    setting: str = "state_db"  # or "state_dsn" (forget_devices_pg.py)


def check_unseen_days(unseen_days) -> float:
    if (isinstance(unseen_days, bool) or not isinstance(unseen_days, (int, float)) or not math.isfinite(unseen_days)
            or not 0 < unseen_days <= MAX_UNSEEN_DAYS):
        raise ForgetRefused("bad_unseen_days", f"--unseen-days {unseen_days!r}: must be a number of days in "
                            f"(0, {MAX_UNSEEN_DAYS:,.0f}]")
    return float(unseen_days)


def forget_devices(state_db: str | Path, unseen_days: float, *, now_wall: float, dry_run: bool = False,
                   max_devices: int = MAX_FLEET) -> ForgetResult:
    """Forget (or, dry_run, list) the devices of `state_db` not seen for unseen_days at wall time
    now_wall; max_devices: the service's cap, which bounds how far its stored times may lag."""
    days = check_unseen_days(unseen_days)
    path = Path(state_db).absolute()  # what it acts on, printed: a relative one is the current folder's
    if not path.is_file():
        raise ForgetRefused("no_state_file", f"state_db {path}: no such file; nothing is registered there")
    if path.stat().st_size == 0:  # before the lock: nothing of an empty file is read or made beside it
        raise ForgetRefused("not_fedge_state", f"state_db {path}: an empty file, no fedge state")
    wait = Wait(now_wall, days * DAY_S, max_devices)
    try:
        result = _read_only(path, wait) if dry_run else _forget(path, wait)
    except sqlite3.DatabaseError as exc:
        if (corrupt := damaged(path, exc)) is not None:
            raise corrupt from exc
        if isinstance(exc, sqlite3.OperationalError) and _read_only_file(exc):
            raise ForgetRefused("read_only", f"state_db {path}: this user may not write it ({exc}); run the command "
                                "as the service's user, the file's owner (e.g. `sudo -u fedge`)") from exc
        if isinstance(exc, sqlite3.OperationalError):  # busy past _BUSY_MS, no permission, a full disk
            raise ServiceUnavailable(f"state_db {path}: {exc}; nothing was forgotten") from exc
        raise ForgetRefused("not_fedge_state", f"state_db {path}: not a SQLite database ({exc})") from None
    if not dry_run:
        log_forgotten(result)
    return result


def log_forgotten(result: ForgetResult) -> None:
    """The service log's line for a run that deleted (both backends)."""
    log.info("forget-devices: %s %s: forgot %d of %d devices last seen before %.0f (wall); kept %d as old",
             result.setting, result.state_db, len(result.forgotten), result.registered, result.cutoff_wall,
             len(result.kept))


@dataclass(frozen=True)
class Wait:
    now_wall: float
    days_s: float  # N days
    max_devices: int
    # The rows the registry holds (_plan reads them): a registry restored over a lowered max_devices
    # keeps every device, and its refreshes take the flushes of that many, not of the cap.
    registered: int = 0

    @property
    def unseen_s(self) -> float:
        """N days plus the refresh lag of the larger of the cap and the registry (registry.refresh_lag_s)."""
        return self.days_s + refresh_lag_s(max(self.max_devices, self.registered))

    @property
    def cutoff(self) -> float:
        return self.now_wall - self.unseen_s


def _read_only_file(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == _SQLITE_READONLY


def _read_only(path: Path, wait: Wait) -> ForgetResult:
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, isolation_level=None)
    try:
        db.execute("BEGIN")  # one snapshot for every read
        try:
            return _plan(db, path, wait, dry_run=True)
        finally:
            db.execute("ROLLBACK")
    finally:
        db.close()


def _forget(path: Path, wait: Wait) -> ForgetResult:
    # ServiceUnavailable while a coordinator runs on it (module docstring); a lock file it makes
    # gets the state_db's owner, or the service (its user) could not open one root made
    with state_db_lock(path, owner_of=path):
        db = sqlite3.connect(str(path), isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            # guard=None: the flock keeps every coordinator off the file while this one transaction runs
            with immediate_transaction(db, guard=None):
                result = _plan(db, path, wait, dry_run=False)
                db.executemany("DELETE FROM devices WHERE device_id = ?", [(d,) for d in result.forgotten])
        finally:
            db.close()
    return result


def _plan(db: sqlite3.Connection, path: Path, wait: Wait, *, dry_run: bool) -> ForgetResult:
    _check_fedge_state(db, path)
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return plan(db, Where("state_db", str(path)), wait, tables, dry_run=dry_run)


def plan(db, where: Where, wait: Wait, tables: set[str], *, dry_run: bool) -> ForgetResult:
    """Both stores' rules, on a connection that runs SqlStore's `?` SQL inside one transaction
    (SQLite's, or pg_store's placeholders on PostgreSQL) of a database holding this build's schema;
    `tables`: the tables it holds (the async journal's are SQLite's only)."""
    _check_strategy(db, where)
    (registered,) = db.execute("SELECT count(*) FROM devices").fetchone()
    wait = replace(wait, registered=registered)
    _check_refreshed_long_enough(db, where, wait)
    busy = busy_devices(db, where.name, tables)
    old = [d for (d,) in db.execute("SELECT device_id FROM devices WHERE last_seen_wall < ? ORDER BY device_id",
                                    (wait.cutoff,))]
    return ForgetResult(where.name, wait.cutoff, registered, tuple(d for d in old if d not in busy),
                        {d: busy[d] for d in old if d in busy}, dry_run, where.setting)


def _check_refreshed_long_enough(db, where: Where, wait: Wait) -> None:
    """too_soon until this build's service refreshed every checking-in device's row for the whole window."""
    row = db.execute("SELECT value FROM meta WHERE key = ?", (REFRESH_SINCE_KEY,)).fetchone()
    since = (checked_json(where.name, "meta", "value", row[0], (int, float), REFRESH_SINCE_KEY, "a number")
             if row else None)
    if since is not None and wait.now_wall - since >= wait.unseen_s:
        return
    ran = ("no service of this build has run on it yet" if since is None else
           f"this build's service first ran on it {(wait.now_wall - since) / DAY_S:.2f} days ago")
    raise ForgetRefused("too_soon", f"{where}: {ran}, and rows written before it hold a device's last "
                        f"change, not its last check-in: run the service {wait.unseen_s / DAY_S:.2f} days (N days "
                        "plus the time its stored last-seen times may lag) before forgetting devices unseen for N")


def _check_fedge_state(db: sqlite3.Connection, path: Path) -> None:
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    ours = has_meta is not None and holds_fedge_schema(db)  # a database with no tables is no state to forget in
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() if ours else None
    if row is None or row[0] != str(SCHEMA_VERSION):
        raise not_this_schema(Where("state_db", str(path)), None if row is None else row[0], SCHEMA_VERSION,
                              missing="no fedge schema row")


def not_this_schema(where: Where, found, version: int, *, missing: str) -> ForgetRefused:
    """not_fedge_state, with the one hint that fits: `found` is the stored schema version (None: `missing`)."""
    if found is None:
        return ForgetRefused("not_fedge_state", f"{where}: {missing}, this build reads schema {version} (check "
                             f"that the {where.setting} names the service's state)")
    try:
        newer = int(found) > version
    except ValueError:
        newer = False
    hint = ("a newer fedge migrated it: run that build's forget-devices" if newer else
            f"an older fedge {where.setting} is upgraded by starting the coordinator on it once")
    return ForgetRefused("not_fedge_state", f"{where}: schema {found}, this build reads schema {version} ({hint})")


def _check_strategy(db, where: Where) -> None:
    strategy = db.execute("SELECT value FROM meta WHERE key = 'strategy'").fetchone()
    if strategy is not None and strategy[0] == "scaffold":
        raise ForgetRefused("scaffold", f"{where} holds SCAFFOLD state: its control step counts every "
                            "registered device in N, and a forgotten device's control variate stays in the server's "
                            "(coordinator/forget_devices.py); raise max_devices instead")


def busy_devices(db, name: str, tables: set[str]) -> dict[str, str]:
    """The devices the open round or the async journal still counts on: device id -> why."""
    why: dict[str, str] = {}
    row = db.execute("SELECT round_id, selected FROM rounds WHERE status = 'open'").fetchone()
    if row is not None:
        round_id, selected = row
        key = f"open round {round_id}"
        for device in checked_json(name, "rounds", "selected", selected, list, key):
            why.setdefault(str(device), f"selected by the open round {round_id}")
        _note(why, db.execute("SELECT device_id FROM updates WHERE round_id = ?", (round_id,)),
              f"an update in the open round {round_id}")
        if "async_updates" in tables:
            _note(why, db.execute("SELECT device_id FROM async_updates WHERE buffer_id = ?", (round_id,)),
                  f"an update in the open buffer {round_id}")
    if "async_tasks" in tables:
        _note(why, db.execute("SELECT device_id FROM async_tasks"), "an async task in flight")
    return why


def _note(why: dict[str, str], rows: Iterable[tuple], reason: str) -> None:
    for (device,) in rows:
        why.setdefault(device, reason)


def forget_from_config(config_path: str | Path, unseen_days: float, *, now_wall: float,
                       dry_run: bool = False) -> tuple[ForgetResult, int]:
    """The command: the state of a `fedge coordinator serve` config; (result, its max_devices)."""
    from .service import load_service_config  # here: the service pulls in the whole coordinator

    check_unseen_days(unseen_days)  # before the config: a typo in N is named first
    cfg = load_service_config(config_path).coordinator
    if cfg.state_dsn:
        from .forget_devices_pg import forget_devices_pg  # psycopg: only a state_dsn needs it

        return (forget_devices_pg(cfg.state_dsn, unseen_days, now_wall=now_wall, dry_run=dry_run,
                                  max_devices=cfg.max_devices), cfg.max_devices)
    if not cfg.state_db:
        raise ForgetRefused("no_state_db", f"{config_path}: no [coordinator] state_db: the registry lives in the "
                            "service's memory only, and a restart forgets every device")
    return (forget_devices(cfg.state_db, unseen_days, now_wall=now_wall, dry_run=dry_run,
                           max_devices=cfg.max_devices), cfg.max_devices)


def render(result: ForgetResult, max_devices: int) -> str:
    """What the command prints: a summary, the kept ones with why, then each forgotten id on a line."""
    verb = "would forget" if result.dry_run else "forgot"
    left = result.registered - len(result.forgotten)
    when = datetime.fromtimestamp(max(0.0, result.cutoff_wall), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"{result.setting} {shown(result.state_db)}",
             f"{verb} {len(result.forgotten)} of {result.registered} devices (stored last seen before {when}); "
             f"{left} {'would ' if result.dry_run else ''}remain, max_devices "
             f"{max_devices:,}" + (" (dry run: nothing changed)" if result.dry_run else "")]
    lines += [f"kept {shown(device)}: {why}" for device, why in sorted(result.kept.items())]
    return "\n".join(lines + [shown(device) for device in result.forgotten])


def shown(text: str) -> str:
    """An id (any characters but NUL: the codec's rule) as one printable line: repr() when it holds a
    newline, a terminal escape or anything else not printable, so one id cannot fake lines or move the cursor."""
    return text if text.isprintable() else repr(text)


def summary_json(result: ForgetResult, max_devices: int) -> str:
    return json.dumps({result.setting: result.state_db, "dry_run": result.dry_run, "cutoff_wall": result.cutoff_wall,
                       "registered": result.registered,
                       "forgotten": list(result.forgotten), "kept": result.kept, "max_devices": max_devices})
