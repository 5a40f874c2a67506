"""`fedge coordinator forget-devices` on PostgreSQL (coordinator/forget_devices_pg.py), on a real
server (tests/pg_server.py) and stores made by the real PostgresStore and PostgresLease.

Oracle: test_forget_devices.py's plain filter over the rows the test wrote (stored last seen
before now - N days - the refresh lag), less the open round's devices; the lock and the fence
are checked with the real leadership objects a running service holds."""

from __future__ import annotations

import json

import pytest

from tests.coordinator.test_forget_devices import NOW, old, random_rows, write_config
from tests.pg_server import import_psycopg

psycopg = import_psycopg()
from fedge.coordinator.forget_devices import ForgetRefused, forget_from_config, render  # noqa: E402
from fedge.coordinator.forget_devices_pg import forget_devices_pg  # noqa: E402
from fedge.coordinator.leadership import FencedOut, PostgresLease  # noqa: E402
from fedge.coordinator.pg_store import PostgresStore  # noqa: E402
from fedge.coordinator.store import StoredDevice, StoredRound, StoredUpdate  # noqa: E402
from fedge.edge_runtime.kernel.errors import ServiceUnavailable  # noqa: E402
from fedge.tools.cli import main  # noqa: E402


def seed(dsn: str, seen: dict[str, float], strategy: str = "fedavg", refresh_since: float | None = 0.0) -> None:
    store = PostgresStore(dsn)
    store.bind("m", strategy)
    if refresh_since is not None:  # what the service records at its first start on this build
        store.refresh_began(refresh_since)
    store.save_devices([StoredDevice(device, wall, True, "", 5) for device, wall in seen.items()])
    store.close()


def rows(dsn: str, sql: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def stored_ids(dsn: str) -> set[str]:
    return {device for (device,) in rows(dsn, "SELECT device_id FROM devices")}


def snapshot(dsn: str) -> list:
    """Every row the command could touch: the registry, the leader row, meta."""
    return [rows(dsn, f"SELECT * FROM {table} ORDER BY 1") for table in ("devices", "leader", "meta", "rounds")]


def test_it_forgets_the_old_devices_and_keeps_recent_ones_and_the_open_rounds(postgres_dsn):
    seen = random_rows(3) | {"sel_old": NOW - 100 * 86_400.0, "upd_old": NOW - 90 * 86_400.0}
    seed(postgres_dsn, seen)
    store = PostgresStore(postgres_dsn)
    store.open_round(StoredRound(7, 0, ("sel_old", "upd_old"), {"sel_old": "t0", "upd_old": "t1"}, 2, 1, NOW,
                                 NOW + 60))
    store.add_update(7, StoredUpdate(1, "upd_old", "u1", "d" * 64, 3, b"x"))
    store.close()
    expected = old(seen, 5) - {"sel_old", "upd_old"}
    assert 0 < len(expected) < len(seen) - 2  # the draw has both kinds
    result = forget_devices_pg(postgres_dsn, 5, now_wall=NOW)
    assert list(result.forgotten) == sorted(expected) and result.registered == len(seen)
    assert result.kept == {"sel_old": "selected by the open round 7", "upd_old": "selected by the open round 7"}
    assert stored_ids(postgres_dsn) == set(seen) - expected
    assert render(result, 10).splitlines()[0] == f"state_dsn {postgres_dsn}" and result.setting == "state_dsn"
    assert rows(postgres_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]  # released


def test_a_dry_run_lists_the_same_devices_and_writes_nothing(postgres_dsn):
    seen = random_rows(5)
    seed(postgres_dsn, seen)
    lease = PostgresLease(postgres_dsn, holder="gone")
    assert lease.try_acquire() and lease.epoch == 1
    lease.close()
    before = snapshot(postgres_dsn)
    result = forget_devices_pg(postgres_dsn, 5, now_wall=NOW, dry_run=True)
    assert set(result.forgotten) == old(seen, 5) and result.dry_run
    assert snapshot(postgres_dsn) == before  # no row deleted, no epoch bumped
    assert "would forget" in render(result, 100)


def test_a_running_leader_makes_it_refuse_and_nothing_changes(postgres_dsn):
    seen = random_rows(6)
    seed(postgres_dsn, seen)
    lease = PostgresLease(postgres_dsn, holder="leader")
    assert lease.try_acquire()  # what `fedge coordinator serve` holds while it leads
    before = snapshot(postgres_dsn)
    with pytest.raises(ServiceUnavailable, match="in use by another coordinator"):
        forget_devices_pg(postgres_dsn, 5, now_wall=NOW)
    assert snapshot(postgres_dsn) == before
    assert forget_devices_pg(postgres_dsn, 5, now_wall=NOW, dry_run=True).forgotten  # a preview may run beside it
    lease.check()  # the leader is neither fenced nor deposed
    lease.close()
    assert set(forget_devices_pg(postgres_dsn, 5, now_wall=NOW).forgotten) == old(seen, 5)


def test_the_epoch_is_bumped_so_a_deposed_leaders_store_is_fenced_out(postgres_dsn):
    seen = random_rows(8)
    seed(postgres_dsn, seen)
    lease = PostgresLease(postgres_dsn, holder="stalled")
    assert lease.try_acquire() and lease.epoch == 1
    store = PostgresStore(postgres_dsn, epoch=lease.epoch)
    lease.close()  # its lease session died; the process (and its store) did not
    forgotten = forget_devices_pg(postgres_dsn, 5, now_wall=NOW).forgotten
    assert forgotten and rows(postgres_dsn, "SELECT epoch FROM leader") == [(2,)]
    with pytest.raises(FencedOut, match="epoch is 2"):  # it wakes and writes its memory back: refused
        store.save_devices([StoredDevice(d, NOW - 100 * 86_400.0, True, "", 5) for d in forgotten])
    store.close()
    assert stored_ids(postgres_dsn) == set(seen) - set(forgotten)
    standby = PostgresLease(postgres_dsn, holder="standby")
    assert standby.try_acquire() and standby.epoch == 3  # the lock was released; epochs only grow
    standby.close()


def test_too_soon_and_not_fedge_state_are_refused_and_change_nothing(postgres_dsn, postgres_server):
    seen = random_rows(9)
    seed(postgres_dsn, seen, refresh_since=None)  # no service of this build has run on it
    before = snapshot(postgres_dsn)
    for dry_run in (True, False):
        with pytest.raises(ForgetRefused) as caught:
            forget_devices_pg(postgres_dsn, 3, now_wall=NOW, dry_run=dry_run)
        assert caught.value.reason == "too_soon"
    assert snapshot(postgres_dsn) == before
    assert rows(postgres_dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]

    empty = postgres_server.create_database()
    for dry_run in (True, False):
        with pytest.raises(ForgetRefused) as caught:
            forget_devices_pg(empty, 3, now_wall=NOW, dry_run=dry_run)
        assert caught.value.reason == "not_fedge_state"
    assert rows(empty, "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'") == [(0,)]

    scaffold = postgres_server.create_database()
    seed(scaffold, {"a": 0.0}, strategy="scaffold")
    with pytest.raises(ForgetRefused) as caught:
        forget_devices_pg(scaffold, 3, now_wall=NOW)
    assert caught.value.reason == "scaffold" and stored_ids(scaffold) == {"a"}


def test_the_command_runs_on_a_state_dsn_config_and_never_prints_the_password(postgres_dsn, tmp_path, capsys):
    seed(postgres_dsn, {"x": 1000.0, "y": 2000.0, "z": 1e12})
    secret = postgres_dsn.replace("fedge@", "fedge:s3cret@")  # trust auth: any password connects
    config = write_config(tmp_path, f'state_dsn = "{secret}"')
    result, cap = forget_from_config(config, 10, now_wall=NOW, dry_run=True)
    assert result.forgotten == ("x", "y") and cap == 50 and "s3cret" not in result.state_db
    assert main(["coordinator", "forget-devices", "--config", config, "--unseen-days", "10", "--json"]) == 0
    out = capsys.readouterr().out
    printed = json.loads(out)
    assert "s3cret" not in out and printed["forgotten"] == ["x", "y"] and printed["state_dsn"].startswith("postgresql")
    assert stored_ids(postgres_dsn) == {"z"}


def _deposed_store(dsn: str) -> PostgresStore:
    """A store that won epoch 1 and whose lease session is gone: a deposed leader that may still wake."""
    lease = PostgresLease(dsn, holder="deposed")
    assert lease.try_acquire()
    store = PostgresStore(dsn, epoch=lease.epoch)
    lease.close()
    return store


@pytest.mark.parametrize("isolation", ["read committed", "repeatable read"])
def test_a_write_in_flight_is_seen_whatever_the_database_default_isolation(postgres_dsn, isolation):
    """The review's reproduction: a deposed leader's transaction opening round 9 (selecting an old device)
    holds the leader row when the command starts; the bump waits for it. Under a database default of
    REPEATABLE READ the command read its snapshot from before that commit and deleted the device the open
    round had just selected; it pins READ COMMITTED for its transaction."""
    import threading
    import time

    seed(postgres_dsn, {f"o{i}": 0.0 for i in range(3)})
    database = postgres_dsn.rsplit("/", 1)[1]
    rows(postgres_dsn, f"ALTER DATABASE {database} SET default_transaction_isolation = '{isolation}'")
    store = _deposed_store(postgres_dsn)
    try:
        in_flight = store._tx()
        tx = in_flight.__enter__()
        store._insert_round(tx, StoredRound(9, 0, ("o1",), {"o1": "t"}, 1, 1, NOW, NOW + 60))
        done = {}
        worker = threading.Thread(target=lambda: done.setdefault("r", forget_devices_pg(postgres_dsn, 5,
                                                                                        now_wall=NOW)))
        worker.start()
        for _ in range(300):  # until the command's backend waits on the leader row's lock (else it proves nothing)
            if rows(postgres_dsn, "SELECT count(*) FROM pg_locks WHERE NOT granted")[0][0]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the command never waited on the leader row")
        in_flight.__exit__(None, None, None)
        worker.join(30)
    finally:
        store.close()
    assert done["r"].kept == {"o1": "selected by the open round 9"}
    assert stored_ids(postgres_dsn) == {"o1"}


def test_a_link_lost_at_the_unlock_after_the_commit_still_reports_what_was_forgotten(postgres_dsn, monkeypatch):
    """The unlock runs after the commit; a link lost there (the review killed the backend) made the command
    exit 1 with the service's 'restart to reconnect' wording, rows already gone. Closing the session
    releases the lock anyway, so the unlock is best effort."""
    from fedge.coordinator.pg_store import _QmarkConnection

    seed(postgres_dsn, {"o": 0.0, "n": NOW})
    real = _QmarkConnection.execute

    def kill_before_unlock(self, sql, params=()):
        if "pg_advisory_unlock" in sql:
            rows(postgres_dsn, f"SELECT pg_terminate_backend({self.conn.info.backend_pid})")
        return real(self, sql, params)

    monkeypatch.setattr(_QmarkConnection, "execute", kill_before_unlock)
    result = forget_devices_pg(postgres_dsn, 5, now_wall=NOW)
    assert result.forgotten == ("o",) and stored_ids(postgres_dsn) == {"n"}


def test_a_leader_row_held_past_the_lock_wait_is_named_and_nothing_is_forgotten(postgres_dsn, monkeypatch):
    from fedge.coordinator import forget_devices_pg as module

    seed(postgres_dsn, {"o": 0.0})
    store = _deposed_store(postgres_dsn)
    stalled = psycopg.connect(postgres_dsn)
    try:
        stalled.execute("SELECT epoch FROM leader WHERE id = 1 FOR UPDATE")  # a stalled write's row lock
        monkeypatch.setattr(module, "LOCK_WAIT_MS", 500)
        with pytest.raises(ServiceUnavailable, match="held the leader row for over 0 s .*pg_stat_activity"):
            forget_devices_pg(postgres_dsn, 5, now_wall=NOW)
    finally:
        stalled.rollback()
        stalled.close()
        store.close()
    assert stored_ids(postgres_dsn) == {"o"}


def test_a_newer_schema_is_not_called_older(postgres_dsn):
    seed(postgres_dsn, {"o": 0.0})
    rows(postgres_dsn, "UPDATE schema_version SET version = version + 1")
    with pytest.raises(ForgetRefused, match="a newer fedge migrated it") as refused:
        forget_devices_pg(postgres_dsn, 5, now_wall=NOW)
    assert refused.value.reason == "not_fedge_state" and "older" not in str(refused.value)
