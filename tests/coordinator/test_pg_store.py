"""PostgresStore beyond the shared contract (test_store_protocol.py): bit-exact tensors as BYTEA,
the refusals, pruning, schema migrations, and leadership with epoch fencing."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.store import StoredRound, StoredUpdate, open_store
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.test_store import _assert_same_state, _record, _round, _state
from tests.pg_server import import_psycopg

psycopg = import_psycopg()
from fedge.coordinator.leadership import FencedOut, LeaseLost, PostgresLease  # noqa: E402
from fedge.coordinator.pg_schema import MIGRATIONS, SchemaTooNew, migrate, redact  # noqa: E402
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402


def _rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def test_state_round_trip_is_bit_exact_and_survives_a_reconnect(postgres_dsn):
    store = PostgresStore(postgres_dsn)
    store.bind("model-x", "fedavg")
    store.save_initial_state(_state(0, seed=1))
    store.open_round(_round(1, 0))
    store.add_update(1, StoredUpdate(0, "a", "u-a", "d" * 64, 7, b"\x00payload-a\xff", b"ctl", 0.25))
    committed = _state(1, seed=2)  # NaN payloads, -0.0, subnormals, 0-d and empty arrays, int64 extras
    store.commit_round(1, committed, _record(1), 1700.0, charge={"z": 1.5})
    store.close()
    again = PostgresStore(postgres_dsn)
    again.bind("model-x", "fedavg")
    _assert_same_state(again.load_state(), committed)
    assert list(again.load_state().params) == list(committed.params)  # insertion order, as SQLite's rowid
    assert again.counted_digest("a", 1, "u-a") == "d" * 64 and again.privacy_ledger() == [{"z": 1.5}]
    assert _rows(postgres_dsn, "SELECT COUNT(*) FROM updates WHERE payload IS NOT NULL") == [(0,)]
    again.close()


def test_refusals_leave_nothing_behind(postgres_dsn):
    store = PostgresStore(postgres_dsn)
    store.bind("model-x", "fedavg")
    with pytest.raises(ConfigError, match="state_dsn"):
        store.bind("model-y", "fedavg")
    store.save_initial_state(_state(0))
    store.open_round(_round(1, 0))
    with pytest.raises(psycopg.errors.UniqueViolation):  # at most one open round
        store.open_round(_round(2, 0))
    store.add_update(1, StoredUpdate(0, "a", "u", "f" * 64, 1, b"x"))
    with pytest.raises(psycopg.errors.UniqueViolation):  # a key is counted once
        store.add_update(1, StoredUpdate(1, "a", "u", "f" * 64, 1, b"x"))
    with pytest.raises(ValueError, match="version"):
        store.commit_round(1, _state(5), {}, 0.0)
    assert store.load_open_round().round_id == 1 and store.load_state().version == 0
    store.commit_round(1, _state(1), _record(1), 0.0)
    with pytest.raises(ValueError, match="closed twice"):  # the refused double commit
        store.commit_round(1, _state(2), {}, 0.0)
    assert store.load_state().version == 1 and store.round_records() == [_record(1)]
    store.close()


def test_old_versions_and_old_keys_are_pruned(postgres_dsn):
    store = PostgresStore(postgres_dsn, keep_versions=2, keep_key_rounds=3)
    store.save_initial_state(_state(0))
    for r in range(1, 7):
        store.open_round(_round(r, r - 1))
        store.add_update(r, StoredUpdate(0, "a", f"u{r}", "a" * 64, 1, b"p"))
        store.commit_round(r, _state(r, seed=r), _record(r), float(r))
    assert _rows(postgres_dsn, "SELECT version FROM models ORDER BY version") == [(5,), (6,)]
    assert _rows(postgres_dsn, "SELECT DISTINCT version FROM tensors ORDER BY version") == [(5,), (6,)]
    assert _rows(postgres_dsn, "SELECT round_id FROM updates ORDER BY round_id") == [(4,), (5,), (6,)]
    _assert_same_state(store.load_state(), _state(6, seed=6))
    store.close()


def test_migrations_run_once_in_order_and_a_newer_schema_is_refused(postgres_dsn):
    PostgresStore(postgres_dsn).close()
    PostgresStore(postgres_dsn).close()  # a second open migrates nothing
    assert _rows(postgres_dsn, "SELECT version FROM schema_version") == [(len(MIGRATIONS),)]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        # A step that fails rolls the whole upgrade back: the database stays at its version.
        broken = (*MIGRATIONS, ("CREATE TABLE extra_a (x INTEGER)", "CREATE TABLE meta (again INTEGER)"))
        with pytest.raises(psycopg.errors.DuplicateTable):
            migrate(conn, "test", broken)
        assert conn.execute("SELECT to_regclass('extra_a')").fetchone() == (None,)
        upgraded = (*MIGRATIONS, ("ALTER TABLE devices ADD COLUMN shard INTEGER",))
        assert migrate(conn, "test", upgraded) == len(MIGRATIONS) + 1
        assert conn.execute("SELECT version FROM schema_version").fetchone() == (len(MIGRATIONS) + 1,)
    with pytest.raises(SchemaTooNew, match=f"schema version {len(MIGRATIONS) + 1} is newer"):
        PostgresStore(postgres_dsn)


def test_a_deposed_leader_cannot_write(postgres_dsn):
    first = PostgresLease(postgres_dsn, holder="first")
    second = PostgresLease(postgres_dsn, holder="second")
    assert first.try_acquire() and first.epoch == 1
    assert not second.try_acquire() and second.epoch is None  # one leader at a time
    old = PostgresStore(postgres_dsn, epoch=first.epoch)
    old.save_initial_state(_state(0))
    old.open_round(_round(1, 0))
    old.add_update(1, StoredUpdate(0, "a", "u", "f" * 64, 1, b"x"))
    first.check()

    first.close()  # the leader's session ends (as when its process is killed): the lock is freed
    stop = threading.Event()
    give_up = threading.Timer(10, stop.set)  # the server frees it once it has ended the session: a moment later
    give_up.start()
    assert second.wait(stop, poll_s=0.02) and second.epoch == 2
    give_up.cancel()
    assert _rows(postgres_dsn, "SELECT epoch, holder FROM leader") == [(2, "second")]
    with pytest.raises(LeaseLost):
        first.check()
    # The old leader's store connection is still up, but every write of it is refused now.
    for write in (lambda: old.commit_round(1, _state(1), _record(1), 0.0),
                  lambda: old.abandon_round(1, {}, 0.0),
                  lambda: old.add_update(1, StoredUpdate(1, "b", "u", "e" * 64, 1, b"y")),
                  lambda: old.open_round(StoredRound(2, 0, ("a",), {"a": "t"}, 1, 1, 0.0, 1.0))):
        with pytest.raises(FencedOut, match="epoch is 2"):
            write()
    new = PostgresStore(postgres_dsn, epoch=second.epoch)
    assert new.load_open_round().events == old.load_open_round().events  # nothing half-written
    new.commit_round(1, _state(1), _record(1), 0.0)  # the new leader finishes the round
    assert new.load_state().version == 1 and new.round_records() == [_record(1)]
    second.check()
    for closeable in (old, new, second):
        closeable.close()


def test_config_picks_postgres_and_refuses_what_it_cannot_do(postgres_dsn, tmp_path):
    store = open_store(CoordinatorConfig(state_dsn=postgres_dsn, keep_versions=4, keep_rounds=5))
    assert isinstance(store, PostgresStore) and store.keep_versions == 4 and store.epoch is None
    assert store.keep_rounds == 5
    store.close()
    with pytest.raises(ConfigError, match="state_db and state_dsn"):
        CoordinatorConfig(state_db=str(tmp_path / "x.db"), state_dsn=postgres_dsn)
    with pytest.raises(ConfigError, match="postgresql://"):
        CoordinatorConfig(state_dsn=str(tmp_path / "x.db"))
    with pytest.raises(ConfigError, match="async journal"):
        CoordinatorConfig(state_dsn=postgres_dsn, mode="async")
    assert redact("postgresql://fedge:s3cret@db:5432/fedge") == "postgresql://fedge:***@db:5432/fedge"


def test_psycopg_is_imported_only_for_state_dsn():
    """The service and the simulator import without psycopg: a device or `make demo` never needs it."""
    code = ("import sys, fedge.coordinator.service, fedge.coordinator.server, fedge.tools.cli\n"
            "assert 'psycopg' not in sys.modules, 'psycopg was imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_lease_session_keeps_alive_both_ways(postgres_dsn):
    """After a network cut the server frees the lock only once it sees the session dead: the lease
    asks for keepalives on both ends, so that is seconds, not Linux's default two hours."""
    lease = PostgresLease(postgres_dsn, holder="k")
    shown = {name: lease._conn.execute(f"SHOW {name}").fetchone()[0]
             for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")}
    assert shown == {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}
    assert lease._conn.info.get_parameters()["keepalives_idle"] == "5"
    lease.close()


@pytest.mark.parametrize("dsn, shown", [
    ("host=db dbname=fedge user=fedge password=s3cret", "host=db dbname=fedge user=fedge password=***"),
    ("host=db password = 's3 cr\\'et' user=fedge", "host=db password = *** user=fedge"),
    ("postgresql://db/fedge?user=fedge&password=s3cret&sslmode=require",
     "postgresql://db/fedge?user=fedge&password=***&sslmode=require"),
])
def test_redact_hides_the_password_of_every_dsn_form(dsn, shown):
    """A key=value DSN's password (and a URL's ?password=) reached ConfigError and
    ServiceUnavailable messages whole: redact knew only user:password@."""
    assert redact(dsn) == shown and "s3" not in redact(dsn)
