"""`fedge coordinator privacy --state DB`: ε spent so far and the rounds left, from the coordinator's state.

Reads the privacy ledger (store.py's privacy_ledger) read-only, so it may run next to a live
service: from the SQLite state_db, or from PostgreSQL when the state is a DSN (postgresql://...,
the state_dsn of a coordinator or of a sharded fleet's leader), in a read-only transaction.
"Rounds left" assumes every next round is like the last charged one (its population,
cohort and z): fewer eligible devices, or more over-selection, make each round cost more.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from fedge.edge_runtime.kernel.errors import ConfigError

from ..store import holds_fedge_schema
from .accountant import ROUNDS_LEFT_LIMIT, epsilon, rounds_left
from .round import RoundPlan


def is_dsn(state: str | Path) -> bool:
    return str(state).startswith(("postgresql://", "postgres://"))


def read_ledger(path: str | Path) -> list[tuple[int, RoundPlan]]:
    """(round id, plan) of every charged round, oldest first; `path` a SQLite file or a PostgreSQL DSN."""
    if is_dsn(path):
        return read_pg_ledger(str(path))
    if not str(path) or not Path(path).is_file():
        raise ConfigError(f"{path!r}: no such state file")
    try:
        with sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, timeout=5) as db:
            try:
                rows = db.execute("SELECT round_id, charge FROM privacy_ledger ORDER BY round_id").fetchall()
            except sqlite3.OperationalError:  # no ledger table: a state file from before privacy (schema < 3)
                if not holds_fedge_schema(db):  # someone else's database: its "ε spent 0" was a false report
                    raise ConfigError(f"{path}: not a fedge state database (no fedge schema in it)") from None
                return []
    except sqlite3.DatabaseError as exc:  # a file that is no SQLite database
        raise ConfigError(f"{path}: not a fedge state database ({exc})") from None
    return _plans(rows, str(path))


def _plans(rows, where: str) -> list[tuple[int, RoundPlan]]:
    """The ledger's rows as plans; a row that is no plan (the file is hostile) is a named ConfigError."""
    plans = []
    for round_id, charge in rows:
        try:
            plans.append((round_id, RoundPlan.from_json(json.loads(charge))))
        except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError; TypeError: charge not text
            raise ConfigError(f"{where}: privacy_ledger round {round_id!r} is no charge fedge wrote ({exc})") from None
    return plans


def privacy_report(ledger: list[tuple[int, RoundPlan]]) -> dict:
    """What the command prints, as data: ε after each charged round, ε spent, rounds left."""
    if not ledger:
        return {"rounds_charged": 0, "epsilon_spent": 0.0, "rounds": []}
    last = ledger[-1][1]
    charges = [p.charge() for _, p in ledger]
    spent = epsilon(charges, last.delta, last.accountant)
    left = rounds_left(charges, last.charge(), last.target_epsilon, last.delta, last.accountant, ROUNDS_LEFT_LIMIT)
    return {"rounds_charged": len(ledger), "epsilon_spent": spent, "target_epsilon": last.target_epsilon,
            "delta": last.delta, "accountant": last.accountant, "rounds_left": left,
            "rounds_left_at_least": left >= ROUNDS_LEFT_LIMIT,  # the search stopped there: more may fit
            "next_round": {"population": last.population, "cohort": last.cohort,
                           "noise_multiplier": last.noise_multiplier, "clip_norm": last.clip_norm,
                           "mechanism": last.mechanism},
            "rounds": [{"round_id": r, "epsilon_after": p.epsilon_after, "population": p.population,
                        "cohort": p.cohort, "noise_multiplier": p.noise_multiplier, "mechanism": p.mechanism,
                        **_groups(p)}
                       for r, p in ledger]}


def _groups(plan: RoundPlan) -> dict:
    """A sharded secure round's shard groups: each sum carries z by itself (sharding/secure_dp.py),
    so the committed sum's noise is the groups' together."""
    if not plan.groups:
        return {}
    total = math.sqrt(math.fsum(g["noise_std"] ** 2 for g in plan.groups))
    return {"shard_groups": list(plan.groups), "total_noise_std": total,
            "noise_vs_one_group": total / max(g["noise_std"] for g in plan.groups)}


def render(report: dict) -> str:
    if not report["rounds_charged"]:
        return "privacy: no round charged yet (ε spent 0)"
    nxt = report["next_round"]
    last = report["rounds"][-1]
    left = ("at least " if report["rounds_left_at_least"] else "") + str(report["rounds_left"])
    grouped = "" if "shard_groups" not in last else (
        f"\nlast round: {len(last['shard_groups'])} shard groups, each sum noised for z by itself (charged as one); "
        f"the committed sum's noise std {last['total_noise_std']:.4g}, {last['noise_vs_one_group']:.3g}x one group's")
    return (f"privacy: ε spent {report['epsilon_spent']:.4f} of {report['target_epsilon']:g} "
            f"(δ={report['delta']:g}, {report['accountant']}) over {report['rounds_charged']} rounds\n"
            f"rounds left: {left} at the last round's settings ({nxt['cohort']} of "
            f"{nxt['population']} devices asked, z={nxt['noise_multiplier']:.4g}, S={nxt['clip_norm']:g})" + grouped)


def read_pg_ledger(dsn: str) -> list[tuple[int, RoundPlan]]:
    """read_ledger from PostgreSQL; migrates nothing (an empty database has no ledger: [])."""
    from ..pg_link import link_params
    from ..pg_schema import redact

    try:
        import psycopg  # optional dependency, as in pg_store.py
    except ImportError:
        raise ConfigError(f"{redact(dsn)}: reading PostgreSQL needs psycopg: pip install 'fedge[postgres]'") from None

    try:
        with psycopg.connect(dsn, autocommit=True,
                             **link_params(dsn, options="-c default_transaction_read_only=on")) as db:
            rows = db.execute("SELECT round_id, charge FROM privacy_ledger ORDER BY round_id").fetchall()
    except psycopg.errors.UndefinedTable:  # a database no coordinator has opened yet
        return []
    except psycopg.Error as exc:  # cannot connect, no permission, ...: a named error, not a traceback
        raise ConfigError(f"{redact(dsn)}: cannot read the privacy ledger: {exc}") from None
    return _plans(rows, redact(dsn))
