"""`fedge coordinator forget-devices` (coordinator/forget_devices.py): the registry rows of devices
unseen for N days go, in one transaction, with the service stopped; the open round's and the
async journal's devices stay; bad arguments and states it must not change are refused by name.

Oracle: a plain filter over the rows the test inserted (stored last seen before now - N days -
the refresh lag, LAST_SEEN_WRITE_S plus a full registry's flushes, and not one the open round or
the journal counts on). Every clock is injected: the rows carry made-up wall times, the fleets
run on a ManualClock; a seeded store says this build's service began refreshing in 1970."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from fedge.coordinator import registry
from fedge.coordinator.async_mode.journal import BufferedRow, SqliteJournal, TaskRow
from fedge.coordinator.forget_devices import (
    DAY_S,
    MAX_UNSEEN_DAYS,
    ForgetRefused,
    forget_devices,
    forget_from_config,
    render,
    summary_json,
)
from fedge.coordinator.limits import MAX_FLEET
from fedge.coordinator.registry import LAST_SEEN_WRITE_S, REFRESH_BATCH_MAX, REFRESH_FLUSH_S, refresh_lag_s
from fedge.coordinator.state_lock import state_db_lock
from fedge.coordinator.store import RoundStore, StoredDevice, StoredRound, StoredUpdate
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError, ServiceUnavailable
from fedge.edge_runtime.kernel.protocol import CheckIn, device_topic
from fedge.tools.cli import main
from tests.coordinator.fleet import make_fleet
from tests.tiny_model import build_tiny_model

NOW = 1_800_000_000.0
# forget_devices' default cap's lag, written out: the longest interval plus the flushes of a full registry
LAG = LAST_SEEN_WRITE_S + REFRESH_FLUSH_S * (-(-MAX_FLEET // REFRESH_BATCH_MAX) + 1)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def seed_store(path, seen: dict[str, float], strategy: str = "fedavg", refresh_since: float | None = 0.0) -> None:
    store = RoundStore(path)
    store.bind("m", strategy)
    if refresh_since is not None:  # what the service records at its first start on this build
        store.refresh_began(refresh_since)
    for device, wall in seen.items():
        store.save_device(StoredDevice(device, wall, True, "", 5))
    store.close()


def random_rows(seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    return {f"dev{i:03d}": NOW - float(rng.uniform(0, 1)) ** 2 * 40 * DAY_S for i in range(60)}  # many recent


def old(seen: dict[str, float], days: float, lag: float = LAG) -> set[str]:
    """The oracle: stored last seen more than `days` days plus the refresh lag ago."""
    return {d for d, wall in seen.items() if wall < NOW - days * DAY_S - lag}


def stored_ids(path) -> set[str]:
    store = RoundStore(path)
    try:
        return {d.device_id for d in store.load_devices()}
    finally:
        store.close()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("days", [0.5, 3, 7.25, 30])
def test_it_forgets_exactly_the_devices_unseen_for_n_days(tmp_path, seed, days):
    path = tmp_path / "state.db"
    assert refresh_lag_s(MAX_FLEET) == LAG
    cutoff = NOW - days * DAY_S - LAG
    seen = random_rows(seed) | {"at_cutoff": cutoff, "just_past": cutoff - 1e-3}
    seed_store(path, seen)
    expected = old(seen, days)
    assert "just_past" in expected and "at_cutoff" not in expected
    assert 0 < len(expected) < len(seen)  # the draw has both kinds
    result = forget_devices(path, days, now_wall=NOW)
    assert set(result.forgotten) == expected and list(result.forgotten) == sorted(expected)
    assert result.registered == len(seen) and result.kept == {}
    assert stored_ids(path) == set(seen) - expected


def test_a_dry_run_lists_the_same_devices_and_changes_nothing(tmp_path):
    path = tmp_path / "state.db"
    seen = random_rows(7)
    seed_store(path, seen)
    before = path.read_bytes()
    result = forget_devices(path, 5, now_wall=NOW, dry_run=True)
    assert set(result.forgotten) == old(seen, 5) and result.dry_run
    assert path.read_bytes() == before and stored_ids(path) == set(seen)
    assert not (tmp_path / "state.db.lock").exists()  # no lock taken, no file made
    assert "would forget" in render(result, 100) and "nothing changed" in render(result, 100)


def test_the_open_rounds_devices_and_the_async_journals_are_kept_however_old(tmp_path):
    path = tmp_path / "state.db"
    seen = {f"dev{i}": NOW - 100 * DAY_S for i in range(8)} | {"fresh": NOW}
    seed_store(path, seen)
    store = RoundStore(path)
    store.open_round(StoredRound(4, 0, ("dev0", "dev1"), {"dev0": "t0", "dev1": "t1"}, 2, 1, NOW, NOW + 60))
    store.add_update(4, StoredUpdate(1, "dev1", "u1", "d" * 64, 3, b"x"))
    store.close()
    journal = SqliteJournal(path)
    journal.add_task(TaskRow("t9", "dev2", 4, 0, NOW + 60))
    journal.add_update(BufferedRow("dev3", 3, "u3", "d" * 64, 4, 2, 0, 3, b"y"), "t-none")
    journal.add_update(BufferedRow("dev4", 2, "u4", "d" * 64, 2, 1, 0, 3, b"z"), "t-none")  # a closed buffer's
    journal.close()
    result = forget_devices(path, 30, now_wall=NOW)
    assert set(result.kept) == {"dev0", "dev1", "dev2", "dev3"}
    assert set(result.forgotten) == {"dev4", "dev5", "dev6", "dev7"}
    assert "open round 4" in result.kept["dev0"] and "async task" in result.kept["dev2"]
    assert "open buffer 4" in result.kept["dev3"]
    assert stored_ids(path) == {"dev0", "dev1", "dev2", "dev3", "fresh"}
    assert "kept dev2: an async task in flight" in render(result, 10)


def test_it_refuses_while_a_coordinator_holds_the_state_and_changes_nothing(tmp_path):
    path = tmp_path / "state.db"
    seen = random_rows(1)
    seed_store(path, seen)
    with state_db_lock(path):  # what `fedge coordinator serve` holds for its life (state_lock.py)
        with pytest.raises(ServiceUnavailable, match="in use by another coordinator"):
            forget_devices(path, 1, now_wall=NOW)
        assert forget_devices(path, 1, now_wall=NOW, dry_run=True).forgotten  # a preview may run beside it
    assert stored_ids(path) == set(seen)


@pytest.mark.parametrize("days", [0, -1, math.nan, math.inf, MAX_UNSEEN_DAYS * 2, 1e300, True, "7"])
def test_bad_unseen_days_are_refused_by_name_before_anything_is_read(tmp_path, days):
    path = tmp_path / "state.db"
    seed_store(path, {"a": 0.0})
    before = path.read_bytes()
    with pytest.raises(ForgetRefused) as caught:
        forget_devices(path, days, now_wall=NOW)
    assert caught.value.reason == "bad_unseen_days" and path.read_bytes() == before


def test_states_it_must_not_change_are_refused_by_name(tmp_path):
    seed_store(tmp_path / "scaffold.db", {"a": 0.0}, strategy="scaffold")
    (tmp_path / "foreign.db").write_bytes(b"not a database at all, just some bytes" * 40)
    cases = {"scaffold.db": "scaffold", "missing.db": "no_state_file", "foreign.db": "not_fedge_state"}
    for name, reason in cases.items():
        with pytest.raises(ForgetRefused) as caught:
            forget_devices(tmp_path / name, 1, now_wall=NOW)
        assert caught.value.reason == reason, name
    assert not (tmp_path / "missing.db").exists()  # refused, not created
    assert stored_ids(tmp_path / "scaffold.db") == {"a"}


def write_config(tmp_path, coordinator: str) -> str:
    path = tmp_path / "coordinator.toml"
    path.write_text(f'[coordinator]\nartifacts_dir = "art"\nmax_devices = 50\n{coordinator}\n')
    return str(path)


def test_the_command_reads_the_services_config_and_names_what_it_cannot_use(tmp_path, capsys):
    seen = random_rows(2)
    seed_store(tmp_path / "state.db", seen)
    config = write_config(tmp_path, f'state_db = "{tmp_path / "state.db"}"')
    result, cap = forget_from_config(config, 10, now_wall=NOW, dry_run=True)
    lag50 = LAST_SEEN_WRITE_S + REFRESH_FLUSH_S * 2  # 50 devices: one flush, plus the one in progress
    assert set(result.forgotten) == old(seen, 10, lag50) and cap == 50
    assert json.loads(summary_json(result, cap))["forgotten"] == sorted(old(seen, 10, lag50))
    with pytest.raises(ForgetRefused) as caught:  # state_dsn: test_forget_devices_pg.py
        forget_from_config(write_config(tmp_path, ""), 10, now_wall=NOW)
    assert caught.value.reason == "no_state_db"
    with pytest.raises(ConfigError, match="config file not found"):
        forget_from_config(tmp_path / "nope.toml", 10, now_wall=NOW)
    # the command line: one line per error, exit 2; the real run prints what it forgot
    assert main(["coordinator", "forget-devices", "--config", str(tmp_path / "nope.toml"), "--unseen-days", "3"]) == 2
    assert main(["coordinator", "forget-devices", "--config", config, "--unseen-days", "0"]) == 2
    missing, named = capsys.readouterr().err.splitlines()  # a ConfigError has no reason to name
    assert missing.startswith("fedge: error: ConfigError: config file not found: ")
    assert named.startswith("fedge: error: ForgetRefused (bad_unseen_days): --unseen-days 0")
    seed_store(tmp_path / "fresh.db", seen, refresh_since=None)  # the README names this refusal `too_soon`
    fresh = write_config(tmp_path, f'state_db = "{tmp_path / "fresh.db"}"')
    assert main(["coordinator", "forget-devices", "--config", fresh, "--unseen-days", "3", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("fedge: error: ForgetRefused (too_soon): state_db ")
    assert main(["coordinator", "forget-devices", "--config", config, "--unseen-days", "1e9"]) == 2
    capsys.readouterr()
    # main reads the real clock: rows from 1970 are old and one from the year 33658 is not, on any day it runs
    seed_store(tmp_path / "cli.db", {"x": 1000.0, "y": 2000.0, "z": 1e12})
    config = write_config(tmp_path, f'state_db = "{tmp_path / "cli.db"}"')
    assert main(["coordinator", "forget-devices", "--config", config, "--unseen-days", "10", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["dry_run"] is False and printed["forgotten"] == ["x", "y"] and printed["max_devices"] == 50
    assert stored_ids(tmp_path / "cli.db") == {"z"}


CLIENTS = itertools.count()


def check_in(fleet, *devices: str) -> None:
    t = fleet.broker.connect(f"checker{next(CLIENTS)}")
    for device in devices:
        t.publish(device_topic(device, "checkin"), encode_message(CheckIn(device, eligible=True, num_examples=9)))
    fleet.drain()
    fleet.coordinator.registry.flush_refreshes(fleet.clock.now())  # the service loop's every turn (loop.py)


def test_devices_checking_in_are_not_forgotten_and_a_forgotten_one_returns_as_new_against_the_cap(model, tmp_path):
    """Three devices; b and c check in every 12 h for 10 days with the same facts, a is silent.
    Before registry.LAST_SEEN_WRITE_S the store kept b's and c's first check-in time (nothing
    else changed) and all three were forgotten."""
    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, store=RoundStore(path), max_devices=3, checkin_refill_s=0.0)
    check_in(fleet, "a", "b", "c")
    for _ in range(20):
        fleet.clock.advance(DAY_S / 2)
        check_in(fleet, "b", "c")
    now = fleet.clock.wall()
    fleet.coordinator.store.close()
    result = forget_devices(path, 5, now_wall=now)
    assert result.forgotten == ("a",) and stored_ids(path) == {"b", "c"}

    again = make_fleet(model, tmp_path, store=RoundStore(path), max_devices=3, checkin_refill_s=0.0)
    c = again.coordinator
    assert set(c.registry) == {"b", "c"}
    check_in(again, "a")  # registered as new: the cap had room again
    assert set(c.registry) == {"a", "b", "c"} and "a" in {d.device_id for d in c.store.load_devices()}
    check_in(again, "d")  # and `a` counts against it again
    assert c.rejections["registry_full"] == 1 and "d" not in c.registry
    assert c.metrics.registry.get_sample_value("fedge_devices_max") == 3
    assert c.metrics.registry.get_sample_value("fedge_devices_registered") == 3
    c.store.close()


def test_it_refuses_until_this_builds_service_refreshed_the_times_for_n_days_plus_the_lag(tmp_path):
    """Rows an older build wrote hold a device's last change, not its last check-in: the store says
    when this build's service first ran (Registry.restore), and forget waits N days + the lag after."""
    seen = random_rows(4)
    for since, days, refused in ((None, 1, True), (NOW - 3 * DAY_S, 3, True), (NOW - 3 * DAY_S - LAG, 3, False),
                                 (NOW - 3 * DAY_S, 2, False), (NOW + DAY_S, 0.5, True)):
        path = tmp_path / f"state-{since}-{days}.db"
        seed_store(path, seen, refresh_since=since)
        for dry_run in (True, False):
            if refused:
                with pytest.raises(ForgetRefused) as caught:
                    forget_devices(path, days, now_wall=NOW, dry_run=dry_run)
                assert caught.value.reason == "too_soon", (since, days)
            else:
                assert set(forget_devices(path, days, now_wall=NOW, dry_run=dry_run).forgotten) == old(seen, days)
        assert stored_ids(path) == set(seen) - (set() if refused else old(seen, days))


def test_the_service_records_when_it_began_refreshing_and_a_restart_keeps_it(model, tmp_path):
    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, store=RoundStore(path))
    began = fleet.clock.wall()
    fleet.coordinator.store.close()
    fleet.clock.advance(DAY_S)
    again = make_fleet(model, tmp_path, store=RoundStore(path))
    again.coordinator.store.close()
    store = RoundStore(path)
    assert store.refresh_began(NOW) == began  # what the first start wrote, once
    store.close()


def test_a_relative_state_db_is_the_current_folders_and_the_command_prints_the_absolute_path(tmp_path, monkeypatch,
                                                                                              capsys):
    seed_store(tmp_path / "state.db", {"x": 1000.0, "z": 1e12})
    config = write_config(tmp_path, 'state_db = "state.db"')
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "state.db")
    assert main(["coordinator", "forget-devices", "--config", config, "--unseen-days", "10", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"state_db {absolute}"
    assert main(["coordinator", "forget-devices", "--config", config, "--unseen-days", "10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state_db"] == absolute and stored_ids(tmp_path / "state.db") == {"z"}


def test_an_empty_file_or_a_database_without_tables_is_no_fedge_state(tmp_path):
    """Before: SQLite's "no such table: meta" came out as ServiceUnavailable (exit 1)."""
    import sqlite3

    (tmp_path / "empty.db").write_bytes(b"")
    db = sqlite3.connect(tmp_path / "notables.db")
    db.execute("PRAGMA user_version = 1")  # a valid database file with no table in it
    db.commit()
    db.close()
    for name in ("empty.db", "notables.db"):
        for dry_run in (True, False):
            with pytest.raises(ForgetRefused) as caught:
                forget_devices(tmp_path / name, 3, now_wall=NOW, dry_run=dry_run)
            assert caught.value.reason == "not_fedge_state", (name, dry_run)
    assert (tmp_path / "empty.db").read_bytes() == b"" and not (tmp_path / "empty.db.lock").exists()


def test_ids_that_are_not_printable_are_printed_escaped_one_a_line(tmp_path):
    """The codec rejects only NUL: an id may hold a newline (a fake line of output) or a terminal escape."""
    tricky = {"plain": 0.0, "two\nlines": 0.0, "\x1b[2Jclear": 0.0, "tab\there": 0.0, "fresh": NOW}
    path = tmp_path / "state.db"
    seed_store(path, tricky)
    result = forget_devices(path, 1, now_wall=NOW)
    assert set(result.forgotten) == set(tricky) - {"fresh"}
    lines = render(result, 10).split("\n")
    assert lines[2:] == ["'\\x1b[2Jclear'", "plain", "'tab\\there'", "'two\\nlines'"]  # sorted ids, repr() when needed
    assert all(line.isprintable() for line in lines)
    assert json.loads(summary_json(result, 10))["forgotten"] == sorted(set(tricky) - {"fresh"})  # JSON: as they are


def test_a_file_this_user_may_not_write_is_refused_by_name(tmp_path, monkeypatch):
    """SQLite's "attempt to write a readonly database" (a user who may read the file, not the
    service's) was ServiceUnavailable, exit 1; it is read_only, which says whose user to run as."""
    import sqlite3

    from fedge.coordinator import forget_devices as module

    path = tmp_path / "state.db"
    seed_store(path, {"a": 0.0})
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as real:  # SQLite's own error, as a non-owner gets it
        reader.execute("DELETE FROM devices")
    reader.close()

    def refused(*args, **kwargs):
        raise real.value

    monkeypatch.setattr(module, "_plan", refused)
    with pytest.raises(ForgetRefused) as caught:
        forget_devices(path, 1, now_wall=NOW)
    assert caught.value.reason == "read_only" and "service's user" in str(caught.value)


def test_a_lock_file_the_command_creates_gets_the_state_dbs_owner_and_an_existing_one_is_left(tmp_path):
    """Run as root beside a service run as `fedge`, it made <state_db>.lock root's, 0600: the
    service could not open it. Only a lock file it creates is given the owner."""
    import os

    if os.geteuid() != 0:
        pytest.skip("giving a file another owner needs root")
    path = tmp_path / "state.db"
    seed_store(path, {"a": 0.0})
    os.chown(path, 65534, 65534)
    forget_devices(path, 1, now_wall=NOW)
    made = os.stat(f"{path}.lock")
    assert (made.st_uid, made.st_gid, made.st_mode & 0o777) == (65534, 65534, 0o600)
    os.chown(f"{path}.lock", 0, 0)  # one that is there already keeps its owner
    forget_devices(path, 1, now_wall=NOW)
    assert os.stat(f"{path}.lock").st_uid == 0


def test_a_registry_larger_than_its_cap_waits_the_lag_of_all_its_rows(tmp_path, monkeypatch):
    """A registry restored over a lowered max_devices keeps every device, and its queued refreshes
    take the flushes of all of them. Before: the lag of the cap alone, so a device whose row lagged
    by more (seen within N days) was forgotten, and too_soon lifted too early."""
    monkeypatch.setattr(registry, "REFRESH_BATCH_MAX", 2)
    rows, cap, days = 10, 2, 3

    def lag(n: int) -> float:  # refresh_lag_s written out: the longest interval, the flushes of n, one more
        return LAST_SEEN_WRITE_S + REFRESH_FLUSH_S * (math.ceil(n / 2) + 1)

    assert lag(rows) - lag(cap) == 4 * REFRESH_FLUSH_S
    between = NOW - days * DAY_S - (lag(cap) + lag(rows)) / 2  # past the cap's lag, within the rows'
    seen = {f"dev{i}": NOW - 100 * DAY_S for i in range(rows - 2)} | {"within": between,
                                                                      "past": NOW - days * DAY_S - lag(rows) - 1}
    path = tmp_path / "state.db"
    seed_store(path, seen)
    result = forget_devices(path, days, now_wall=NOW, max_devices=cap)
    assert result.cutoff_wall == NOW - days * DAY_S - lag(rows)
    assert set(result.forgotten) == old(seen, days, lag(rows)) and "past" in result.forgotten
    assert stored_ids(path) == {"within"}
    big_cap = forget_devices(path, days, now_wall=NOW, max_devices=100, dry_run=True)
    assert big_cap.cutoff_wall == NOW - days * DAY_S - lag(100)  # a cap above the rows: the cap's lag

    young = tmp_path / "young.db"  # this build's service first ran between the two waits
    seed_store(young, seen, refresh_since=NOW - days * DAY_S - (lag(cap) + lag(rows)) / 2)
    with pytest.raises(ForgetRefused) as refused:
        forget_devices(young, days, now_wall=NOW, max_devices=cap, dry_run=True)
    assert refused.value.reason == "too_soon"
