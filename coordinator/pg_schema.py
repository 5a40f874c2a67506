"""PostgresStore's schema, as an ordered list of migrations applied when a store or a lease opens.

    schema_version  version INT             one row: how many MIGRATIONS the database has had

MIGRATIONS[i] takes a database from version i to i + 1; version 1 is the initial schema, the
same tables as the SQLite store's version 3 (store.py draws them), with PostgreSQL's types:
DOUBLE PRECISION for wall times and norms (REAL is 4 bytes here), BYTEA for tensors and
payloads, an identity column `tensors.ord` for insertion order (SQLite's rowid), and

    leader          id = 1, epoch BIGINT, holder TEXT, since_wall   leadership.py: the fencing epoch

`migrate` applies the missing steps in one transaction, under an advisory lock so that two
coordinators opening one database at once do not both migrate it: a failed step leaves the
database at its old version. A database newer than this code (a newer fedge migrated it) is
refused by name, SchemaTooNew, rather than written with a schema this code does not know.
A new step is appended, never edited: deployed databases have run the old ones.
"""

from __future__ import annotations

import re

from fedge.edge_runtime.kernel.errors import ConfigError, ServiceUnavailable

from .pg_link import first_line

MIGRATION_LOCK = 0x66656467656D  # pg_advisory_xact_lock key ("fedgem"): one migrator at a time

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # 1: the initial schema
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE models (version BIGINT PRIMARY KEY, round_id BIGINT, created_wall DOUBLE PRECISION NOT NULL, "
        "extra_groups TEXT NOT NULL)",
        "CREATE TABLE tensors (ord BIGINT GENERATED ALWAYS AS IDENTITY, version BIGINT NOT NULL, kind TEXT NOT NULL, "
        "grp TEXT NOT NULL, name TEXT NOT NULL, dtype TEXT NOT NULL, shape TEXT NOT NULL, data BYTEA NOT NULL, "
        "PRIMARY KEY (version, kind, grp, name))",
        "CREATE TABLE rounds (round_id BIGINT PRIMARY KEY, "
        "status TEXT NOT NULL CHECK (status IN ('open', 'committed', 'abandoned')), model_version BIGINT NOT NULL, "
        "selected TEXT NOT NULL, tasks TEXT NOT NULL, target BIGINT NOT NULL, quorum BIGINT NOT NULL, "
        "started_wall DOUBLE PRECISION NOT NULL, deadline_wall DOUBLE PRECISION NOT NULL, "
        "closed_wall DOUBLE PRECISION, record TEXT, privacy TEXT)",
        "CREATE UNIQUE INDEX one_open_round ON rounds (status) WHERE status = 'open'",
        "CREATE TABLE updates (device_id TEXT NOT NULL, round_id BIGINT NOT NULL, update_id TEXT NOT NULL, "
        "digest TEXT NOT NULL, seq BIGINT NOT NULL, num_examples BIGINT NOT NULL, payload BYTEA, control BYTEA, "
        "reported_norm DOUBLE PRECISION, PRIMARY KEY (device_id, round_id, update_id))",
        "CREATE INDEX updates_by_round ON updates (round_id, seq)",
        "CREATE TABLE declines (round_id BIGINT NOT NULL, device_id TEXT NOT NULL, seq BIGINT NOT NULL, "
        "reason TEXT NOT NULL, PRIMARY KEY (round_id, device_id))",
        "CREATE TABLE evaluations (seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, round_id BIGINT NOT NULL, "
        "record TEXT NOT NULL)",
        "CREATE TABLE privacy_ledger (round_id BIGINT PRIMARY KEY, charge TEXT NOT NULL)",
        "CREATE TABLE devices (device_id TEXT PRIMARY KEY, last_seen_wall DOUBLE PRECISION NOT NULL, "
        "eligible INTEGER NOT NULL, reason TEXT NOT NULL, num_examples BIGINT NOT NULL)",
        "CREATE TABLE leader (id INTEGER PRIMARY KEY CHECK (id = 1), epoch BIGINT NOT NULL, holder TEXT NOT NULL, "
        "since_wall DOUBLE PRECISION NOT NULL)",
    ),
    (  # 2: sharded ingest (coordinator/sharding/tables.py draws these)
        "CREATE TABLE shard_leases (shard INTEGER PRIMARY KEY, epoch BIGINT NOT NULL, holder TEXT NOT NULL, "
        "since_wall DOUBLE PRECISION NOT NULL)",
        "CREATE TABLE shard_rounds (round_id BIGINT PRIMARY KEY, sealed BOOLEAN NOT NULL DEFAULT false)",
        "CREATE TABLE shard_updates (round_id BIGINT NOT NULL, device_id TEXT NOT NULL, update_id TEXT NOT NULL, "
        "shard INTEGER NOT NULL, seq BIGINT NOT NULL, digest TEXT NOT NULL, weight DOUBLE PRECISION NOT NULL, "
        "payload BYTEA NOT NULL, PRIMARY KEY (round_id, device_id, update_id))",
        "CREATE INDEX shard_updates_by_shard ON shard_updates (round_id, shard, seq)",
        "CREATE TABLE shard_sums (round_id BIGINT NOT NULL, shard INTEGER NOT NULL, data BYTEA NOT NULL, "
        "weight DOUBLE PRECISION NOT NULL, count BIGINT NOT NULL, PRIMARY KEY (round_id, shard))",
    ),
    (  # 3: the leader's shard assignment of each round (sharding/assign.py, tables.py)
        "CREATE TABLE shard_assignment (round_id BIGINT NOT NULL, device_id TEXT NOT NULL, shard INTEGER NOT NULL, "
        "counted BOOLEAN NOT NULL DEFAULT false, PRIMARY KEY (round_id, device_id))",
    ),
)


class SchemaTooNew(ConfigError):
    """The database was migrated by a newer fedge than this one."""


def migrate(conn, where: str, migrations: tuple[tuple[str, ...], ...] = MIGRATIONS) -> int:
    """Bring the database on `conn` (psycopg, autocommit) to len(migrations); return that version."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        current = 0 if row is None else row[0]
        if current > len(migrations):
            raise SchemaTooNew(f"{where}: schema version {current} is newer than this build's {len(migrations)}; "
                               "run the fedge release that migrated it")
        for statements in migrations[current:]:
            for statement in statements:
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (len(migrations),))
        else:
            conn.execute("UPDATE schema_version SET version = %s", (len(migrations),))
    return len(migrations)


def connect(dsn: str, **options):
    """psycopg.connect, with what an operator can act on said in one line: a server that refuses
    or a database, role or password it does not know (ServiceUnavailable: exit 1, the supervisor
    tries again) or a DSN it cannot parse (ConfigError). They were 26-line tracebacks."""
    import psycopg  # optional dependency (fedge[postgres]): only a coordinator with state_dsn needs it

    try:
        return psycopg.connect(dsn, **options)
    except psycopg.OperationalError as exc:
        first = first_line(exc, last=True)
        raise ServiceUnavailable(f"state_dsn {redact(dsn)}: cannot connect: {first}") from None
    except psycopg.ProgrammingError as exc:
        raise ConfigError(f"state_dsn {redact(dsn)}: {exc}") from None


def redact(dsn: str) -> str:
    """The DSN without its password, for messages and logs: a URL's user:password@ and its
    ?password= parameter, and a key=value DSN's password (quoted or not)."""
    if "://" in dsn:
        dsn = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)
        return re.sub(r"([?&]password=)[^&#]*", r"\1***", dsn)
    return re.sub(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s']\S*)", r"\1***", dsn)
