"""The SQLite state_db deleted or replaced under a running coordinator (the ops red team: after an
`rm` of the file the service went on committing rounds 2 to 10 into the unlinked inode, and the
next start began afresh at version 0). coordinator/state_file.py."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from fedge.coordinator.errors import GroupCommitFailed, StoreCorrupt, StoreGone
from fedge.coordinator.group_commit import GroupCommit
from fedge.coordinator.store import RoundStore, StoredUpdate
from tests.coordinator.test_store import _assert_same_state, _record, _round, _state


def _store_at_version_1(path: Path) -> RoundStore:
    store = RoundStore(path)
    store.bind("model-x", "fedavg")
    store.save_initial_state(_state(0, seed=1))
    store.open_round(_round(1, 0))
    store.add_update(1, StoredUpdate(0, "a", "u-a", "d" * 64, 7, b"payload-a"))
    store.commit_round(1, _state(1, seed=2), _record(1), 1700.0)
    store.open_round(_round(2, 1))
    return store


def _versions(path: Path) -> list[int]:
    """The model versions a file holds, read by sqlite3 itself (not the store under test)."""
    with sqlite3.connect(path) as db:
        return [v for (v,) in db.execute("SELECT version FROM models ORDER BY version")]


def test_a_deleted_state_db_stops_the_next_write_and_its_state_is_rescued(tmp_path):
    path = tmp_path / "state.db"
    store = _store_at_version_1(path)
    path.unlink()
    with pytest.raises(StoreGone, match=r"was deleted .* saved in .*state\.db\.rescued"):
        store.add_update(2, StoredUpdate(1, "b", "u-b", "e" * 64, 9, b"payload-b"))
    with pytest.raises(StoreGone):  # and every later write: nothing more goes into the unlinked file
        store.commit_round(2, _state(2, seed=3), _record(2), 1800.0)
    assert not path.exists()  # no write recreated it
    rescued = tmp_path / "state.db.rescued"
    assert _versions(rescued) == [0, 1]
    store.close()
    for stale in ("state.db-wal", "state.db-shm"):  # what the message says to move away
        (tmp_path / stale).unlink(missing_ok=True)
    os.replace(rescued, path)
    back = RoundStore(path)  # the restart resumes from it: version 1, round 2 open
    _assert_same_state(back.load_state(), _state(1, seed=2))
    assert back.load_open_round().round_id == 2 and back.next_round_id() == 2


def test_a_state_db_replaced_by_another_file_is_named_and_a_second_rescue_does_not_overwrite_the_first(tmp_path):
    path = tmp_path / "state.db"
    store = _store_at_version_1(path)
    (tmp_path / "state.db.rescued").write_bytes(b"an earlier rescue")
    other = tmp_path / "other.db"
    sqlite3.connect(other).close()
    os.replace(other, path)
    with pytest.raises(StoreGone, match=r"was replaced by another file .* saved in .*state\.db\.rescued-2"):
        store.abandon_round(2, _record(2), 1800.0)
    assert (tmp_path / "state.db.rescued").read_bytes() == b"an earlier rescue"
    assert _versions(tmp_path / "state.db.rescued-2") == [0, 1]


@pytest.mark.parametrize("left", ["payloads", "wal"])
def test_a_start_without_the_state_db_but_with_what_it_left_is_refused(tmp_path, left):
    path = tmp_path / "state.db"
    store = _store_at_version_1(path)
    store.add_update(2, StoredUpdate(1, "b", "u-b", "e" * 64, 9, b"payload-b"))  # round-2.log holds it
    store.close()
    path.unlink()
    if left == "wal":
        for name in os.listdir(tmp_path / "state.db.payloads"):
            if name.startswith("round-"):
                os.unlink(tmp_path / "state.db.payloads" / name)
        (tmp_path / "state.db-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(28))  # a WAL header's worth
    with pytest.raises(StoreGone, match="state.db is missing"):
        RoundStore(path)
    assert not path.exists()  # refused before creating a fresh file
    assert left == "wal" or (tmp_path / "state.db.payloads" / "round-2.log").stat().st_size == len(b"payload-b")


def test_a_fresh_start_beside_an_empty_payload_folder_is_not_refused(tmp_path):
    path = tmp_path / "state.db"
    _store_at_version_1(path).close()  # round 2 open, no update: no round log
    path.unlink()
    for stale in ("state.db-wal", "state.db-shm"):
        (tmp_path / stale).unlink(missing_ok=True)
    assert RoundStore(path).load_state() is None


def test_a_group_commit_lets_store_gone_through_so_the_exit_is_not_a_restartable_one():
    class Gone:
        def add_update(self, round_id, *updates):
            raise StoreGone("state_db x was deleted")

    class Broken:
        def add_update(self, round_id, *updates):
            raise OSError(28, "No space left on device")

    for store, raised in ((Gone(), StoreGone), (Broken(), GroupCommitFailed)):
        group = GroupCommit(store)
        with pytest.raises(raised):
            with group.burst():
                group.add_update(1, StoredUpdate(0, "a", "u", "d" * 64, 1, b"p"))
    assert StoreGone("x").__class__.__dict__.get("exit_status", 2) == 2  # the CLI's default: no restart


def _service_config(tmp_path: Path, state_db: Path):
    from fedge.coordinator.config import CoordinatorConfig
    from fedge.coordinator.service import ServiceConfig
    from fedge.edge_runtime.kernel.transport.settings import MqttSettings
    from tests.tiny_model import build_tiny_model

    art_dir, manifest, _ = build_tiny_model(tmp_path / "artifacts")
    return ServiceConfig(broker=MqttSettings(url="mqtt://127.0.0.1:9"),
                         coordinator=CoordinatorConfig(artifacts_dir=str(art_dir), state_db=str(state_db))), manifest


@pytest.mark.parametrize("offset", [100, 4096])  # page 1's b-tree header; page 2
def test_a_damaged_state_db_is_store_corrupt_at_the_start_not_a_traceback(tmp_path, offset, capsys):
    """The red team overwrote 512 bytes of a coordinator's state_db: at page 2 the start was a
    traceback (sqlite3.DatabaseError: database disk image is malformed), at page 1 it was called
    'not a fedge state database'."""
    from fedge.coordinator import service
    from fedge.tools.cli import _guarded

    state_db = tmp_path / "state.db"
    cfg, manifest = _service_config(tmp_path, state_db)
    first = service.build_service(cfg)[1]  # a real start, then its file damaged
    first.store.close()
    with open(state_db, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 512)
    with pytest.raises(StoreCorrupt, match=r"state\.db: SQLite says the file is damaged \(database disk image is "
                                           r"malformed\)"):
        service.build_service(cfg)

    class Args:
        verbose, log_format, command, coordinator_command = 0, "text", "coordinator", "serve"

    assert _guarded(Args(), lambda: service.build_service(cfg)) == 2  # not restartable: the file must be restored
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedge: error: StoreCorrupt: state_db ") and "Traceback" not in err


def test_the_stores_refusals_in_the_loop_are_named_and_restartable():
    """A round's open or commit the SQLite store refused (a full disk, an I/O error) ended the
    service with a traceback from loop.run; now ServiceUnavailable (exit 1: the restart resumes)."""
    from fedge.coordinator.state_file import sqlite_errors_named
    from fedge.edge_runtime.kernel.errors import ServiceUnavailable

    with pytest.raises(ServiceUnavailable, match="state_db s.db could not be read or written: database or disk is "
                                                 "full; the service stopped") as caught:
        with sqlite_errors_named("s.db"):
            raise sqlite3.OperationalError("database or disk is full")
    assert caught.value.exit_status == 1
    with pytest.raises(sqlite3.IntegrityError):  # a constraint is a bug to see whole, not a store outage
        with sqlite_errors_named("s.db"):
            raise sqlite3.IntegrityError("UNIQUE constraint failed")


def test_the_service_loop_turns_a_refused_store_write_into_service_unavailable(monkeypatch):
    import threading
    from types import SimpleNamespace

    from fedge.coordinator import service
    from fedge.edge_runtime.kernel.errors import ServiceUnavailable
    from fedge.edge_runtime.kernel.transport.settings import MqttSettings

    def run():
        raise sqlite3.OperationalError("disk I/O error")

    closed = []
    transport = SimpleNamespace(connect=lambda timeout=None: None, connected=False, close=lambda: closed.append(1))
    coordinator = SimpleNamespace(transport=transport, state=SimpleNamespace(version=1),
                                  manifest=SimpleNamespace(model_id="m"))
    loop = SimpleNamespace(run=run, stop=lambda: None, exhausted=None)
    monkeypatch.setattr(service, "build_service", lambda cfg, epoch: (loop, coordinator))
    cfg = SimpleNamespace(coordinator=SimpleNamespace(metrics_port=0, state_db="s.db"), broker=MqttSettings(),
                          service=service.ServiceSettings())
    with pytest.raises(ServiceUnavailable, match="state_db s.db could not be read or written: disk I/O error"):
        service._serve(cfg, None, threading.Event(), [])
    assert closed == [1]  # the link is still closed on the way out


def test_a_state_folder_replaced_by_a_file_is_store_gone_not_a_bare_os_error(tmp_path, monkeypatch):
    """The state folder moved away and a file made at its name: the identity check raised
    NotADirectoryError (an unnamed OSError: a group commit made it GroupCommitFailed, exit 1, and
    the restart began afresh); the path names no file, so StoreGone."""
    folder = tmp_path / "state"
    folder.mkdir()
    store = _store_at_version_1(folder / "state.db")
    folder.rename(tmp_path / "moved")
    folder.write_bytes(b"not a folder")
    monkeypatch.chdir(tmp_path)  # where the rescue goes, with no folder beside state_db
    with pytest.raises(StoreGone, match=r"state\.db was deleted while the coordinator was running"):
        store.abandon_round(2, _record(2), 1800.0)


def test_an_async_journal_write_after_the_state_db_was_deleted_is_store_gone_with_a_rescue(tmp_path):
    """The async journal (its own connection to the state_db) wrote without the store's check:
    a task row went into the unlinked file, an Ack's update too, all lost at the next start. Now
    every write transaction on the file (sqlite_tx's guard) stops with StoreGone and a copy."""
    from fedge.coordinator.async_mode.journal import SqliteJournal, TaskRow, open_journal

    path = tmp_path / "state.db"
    store = _store_at_version_1(path)
    journal = open_journal(store)
    assert isinstance(journal, SqliteJournal)
    journal.add_task(TaskRow("t-1", "dev-a", 2, 1, 1800.0))
    path.unlink()
    with pytest.raises(StoreGone, match=r"state\.db was deleted .* saved in .*state\.db\.rescued"):
        journal.add_task(TaskRow("t-2", "dev-b", 2, 1, 1800.0))
    with sqlite3.connect(tmp_path / "state.db.rescued") as db:  # the journal's rows and the store's, t-2 not
        assert db.execute("SELECT task_id FROM async_tasks").fetchall() == [("t-1",)]
    assert _versions(tmp_path / "state.db.rescued") == [0, 1]
    assert not path.exists()


def test_a_relative_state_db_still_names_its_file_after_the_process_changed_folder(tmp_path):
    """state_db = 'state.db' and a chdir after the open (a library user's, a plugin's): the
    identity check looked for state.db in the new folder, found none, and stopped a healthy
    service with StoreGone. The path is made absolute once, at the open; the payload log too
    stays beside the file it belongs to."""
    from fedge.coordinator.async_mode.journal import TaskRow, open_journal

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    before = os.getcwd()
    os.chdir(tmp_path)
    try:
        store = _store_at_version_1(Path("state.db"))
        journal = open_journal(store)
        os.chdir(elsewhere)
        store.add_update(2, StoredUpdate(1, "b", "u-b", "e" * 64, 9, b"payload-b"))
        journal.add_task(TaskRow("t-1", "dev-a", 2, 1, 1800.0))
        store.commit_round(2, _state(2, seed=3), _record(2), 1800.0)
        assert store.path == tmp_path / "state.db"
    finally:
        os.chdir(before)
    assert _versions(tmp_path / "state.db") == [0, 1, 2]
    assert os.listdir(elsewhere) == []  # nothing made in the folder it moved to


@pytest.mark.parametrize("copy_in", ["workdir", "tempdir", "state_directory"])
def test_the_whole_state_folder_deleted_while_serving_is_store_gone_exit_2_with_a_copy_elsewhere(
        tmp_path, monkeypatch, capsys, copy_in):
    """`rm -rf` of state_db's folder mid-round: the payload log's append failed first (ENOENT: no
    folder to make its own in), a group commit made it GroupCommitFailed (exit 1, restarted), and
    the restart found nothing and began afresh at version 0. Now StoreGone (exit 2), and the copy
    goes where fedge may write, since beside state_db there is no folder: the working directory,
    or, when that was the deleted folder, the temp folder. The message names it. Under the shipped
    systemd unit the working directory is the state folder and /tmp is private (gone when the unit
    stops, right after this exit): there the copy goes to the unit's second state directory, which
    systemd names in $STATE_DIRECTORY."""
    import shutil
    import tempfile

    from fedge.tools.cli import _guarded

    folder = tmp_path / "state"
    folder.mkdir()
    store = _store_at_version_1(folder / "state.db")
    store.add_update(2, StoredUpdate(1, "b", "u-b", "e" * 64, 9, b"payload-b"))  # round-2.log open
    workdir, temp, unit_rescued = tmp_path / "workdir", tmp_path / "temp", tmp_path / "fedge-coordinator-rescued"
    for made in (workdir, temp, unit_rescued):
        made.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.chdir(workdir if copy_in == "workdir" else folder)  # restored at teardown
    if copy_in == "state_directory":  # as systemd sets it for StateDirectory=<state> <rescued>
        monkeypatch.setenv("STATE_DIRECTORY", f"{folder}:{unit_rescued}")
    else:
        monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    shutil.rmtree(folder)
    group = GroupCommit(store)

    def write():
        with group.burst():
            group.add_update(2, StoredUpdate(2, "c", "u-c", "f" * 64, 10, b"payload-c"))

    with pytest.raises(StoreGone) as caught:
        write()
    rescued = {"workdir": workdir, "tempdir": temp, "state_directory": unit_rescued}[copy_in] / "state.db.rescued"
    assert f"saved in {rescued} (its folder {folder} is gone)" in str(caught.value)
    assert f"put {rescued} back at {folder / 'state.db'}" in str(caught.value)
    assert "could not be read" not in str(caught.value)  # round 1's closed row keeps its log columns: not counted
    assert _versions(rescued) == [0, 1]
    with sqlite3.connect(rescued) as db:  # the open round's first update's row came along
        assert db.execute("SELECT update_id FROM updates WHERE round_id = 2").fetchall() == [("u-b",)]
    assert not folder.exists()  # never made again
    _restart_from(rescued, folder, expect={"u-b": b"payload-b"})

    class Args:
        verbose, log_format, command, coordinator_command = 0, "text", "coordinator", "serve"

    assert _guarded(Args(), write) == 2  # not restartable: a restart would start afresh
    assert "fedge: error: StoreGone: state_db " in capsys.readouterr().err


def _restart_from(rescued: Path, folder: Path, expect: dict[str, bytes]) -> None:
    """Do what StoreGone's message says (put the copy back at state_db, start again) in a fresh
    folder, and check the open round resumes with its updates' bytes: the round's payload log went
    with the folder, so the copy must carry them (it once held rows pointing into that log, and the
    start refused it as StoreCorrupt)."""
    import shutil

    folder.mkdir()
    try:
        shutil.copy(rescued, folder / "state.db")
        back = RoundStore(folder / "state.db")
        _assert_same_state(back.load_state(), _state(1, seed=2))
        stored = back.load_open_round()
        assert stored.round_id == 2
        assert {e.update_id: e.payload for e in stored.events} == expect
        back.close()
    finally:
        shutil.rmtree(folder)


def test_a_rescue_is_a_new_0600_file_and_follows_no_link(tmp_path):
    """The copy holds the open round's updates: made 0600 whatever the umask (the state folder is
    0700, the temp folder is not), and never through a link someone left at its name (the link's
    target once got the state written into it, and a failed copy unlinked it)."""
    path = tmp_path / "state.db"
    store = _store_at_version_1(path)
    target = tmp_path / "elsewhere"
    (tmp_path / "state.db.rescued").symlink_to(target)  # dangling: exists() said the name was free
    path.unlink()
    before = os.umask(0o022)
    try:
        with pytest.raises(StoreGone, match=r"saved in .*state\.db\.rescued-2"):
            store.abandon_round(2, _record(2), 1800.0)
    finally:
        os.umask(before)
    assert not target.exists()
    assert (os.stat(tmp_path / "state.db.rescued-2").st_mode & 0o777) == 0o600
    assert _versions(tmp_path / "state.db.rescued-2") == [0, 1]


@pytest.mark.parametrize("where", ["beside", "state_directory"])
def test_a_start_without_the_state_db_but_with_a_rescued_copy_is_refused(tmp_path, monkeypatch, where):
    """After an `rm -rf` of the state folder the service stopped with StoreGone (exit 2) and saved
    a copy; a reboot then starts the enabled unit, which found no state_db, no payload log and no
    WAL, and began afresh at version 0 without a word. The copy itself now says a state existed:
    beside state_db, or in a state directory systemd made for the unit (not the working directory
    or the temp folder, where any run may have left one)."""
    folder, unit_rescued = tmp_path / "state", tmp_path / "rescued"
    folder.mkdir()
    unit_rescued.mkdir()
    monkeypatch.setenv("STATE_DIRECTORY", f"{folder}:{unit_rescued}")
    copy = (folder if where == "beside" else unit_rescued) / "state.db.rescued-2"
    copy.write_bytes(b"a copy")
    with pytest.raises(StoreGone, match=f"state.db is missing, but .*{copy.name}"):
        RoundStore(folder / "state.db")
    assert not (folder / "state.db").exists()
    copy.unlink()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "state.db.rescued").write_bytes(b"another run's copy, in the working directory")
    assert RoundStore(folder / "state.db").load_state() is None  # a fresh start


def test_an_open_round_update_whose_bytes_cannot_be_read_is_left_out_of_the_rescue_and_counted(tmp_path,
                                                                                            monkeypatch):
    """The copy must restart: a row whose bytes the held log no longer has (truncated here) would
    stop the start as StoreCorrupt, so it is left out of the copy, and the message says how many."""
    import shutil

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    folder = tmp_path / "state"
    folder.mkdir()
    store = _store_at_version_1(folder / "state.db")
    store.add_update(2, StoredUpdate(1, "b", "u-b", "e" * 64, 9, b"payload-b"))
    os.ftruncate(store._payloads._files[2], 0)  # the held descriptor's bytes gone
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(folder)
    with pytest.raises(StoreGone, match=r"1 of the open round's 1 accepted updates could not be read back"):
        store.add_update(2, StoredUpdate(2, "c", "u-c", "f" * 64, 10, b"payload-c"))
    _restart_from(tmp_path / "state.db.rescued", folder, expect={})
