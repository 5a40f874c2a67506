"""What the payload log's sweeps may delete (coordinator/payload_log.py): only its own
`round-<id>.log` files, by their full name, and only half-made folders that hold nothing but
its marker. A file named like a round file with more after it, and fedge's marker inside a
folder that also holds someone else's file, are left alone. And a read of 0 bytes reads
nothing, even of a round with no file."""

from __future__ import annotations

import subprocess
import sys

from fedge.coordinator.payload_log import MARKER, PayloadLog


def test_a_sweep_deletes_closed_round_files_and_nothing_named_like_them(tmp_path):
    log = PayloadLog(tmp_path / "p")
    log.append(3, [b"closed round 3"])
    for name in ("round-3.log.bak", "round-4.logs", "round-5.log~"):
        (tmp_path / "p" / name).write_bytes(b"not fedge's")
    assert log.sweep(lambda: set()) == [3]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == sorted(
        [MARKER, "round-3.log.bak", "round-4.logs", "round-5.log~"])


def test_a_half_made_folder_with_another_file_beside_the_marker_keeps_both(tmp_path):
    """A dead pid's name, fedge's marker, and a file that is not fedge's: not a folder fedge half
    made (it holds only the marker), so neither file is touched."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    mixed = tmp_path / f".p.tmp-{dead}"
    mixed.mkdir()
    (mixed / MARKER).write_text("update payloads of open rounds")
    (mixed / "notes.txt").write_text("not fedge's")
    PayloadLog(tmp_path / "p").sweep(lambda: set())
    assert sorted(p.name for p in mixed.iterdir()) == sorted([MARKER, "notes.txt"])


def test_a_read_of_nothing_needs_no_file(tmp_path):
    """0 bytes at offset 0 of a round with no file (an update whose payload and control are both
    empty, its round's file gone): b"", not os.pread on the descriptor -1 (EBADF)."""
    log = PayloadLog(tmp_path / "p")
    assert log.read(7, 0, 0) == b"" and log.read(7, 5, 0) == b""


def test_a_round_file_deleted_while_serving_is_put_back_with_every_byte_before_the_next_append(tmp_path, caplog):
    """The ops red team: `rm -rf <state_db>.payloads` during a round. Appends went into the
    unlinked file and a restart found rows pointing at bytes no file held (StoreCorrupt: the
    round's acked updates lost). The oracle: a fresh PayloadLog (a restart) reads every blob at
    the offset its append returned."""
    import shutil

    folder = tmp_path / "state.db.payloads"
    log = PayloadLog(folder)
    blobs = [b"a" * 70, b"bb" * 500, b"c"]
    offsets = log.append(3, blobs[:2])
    shutil.rmtree(folder)  # the whole folder, marker and all
    offsets += log.append(3, blobs[2:])
    assert offsets == [0, 70, 1070]
    assert "written back" in caplog.text
    (folder / "round-3.log").unlink()  # and once more, the file alone
    blobs.append(b"d" * 9)
    offsets += log.append(3, blobs[3:])
    log.close()
    restarted = PayloadLog(folder)
    assert [restarted.read(3, at, len(b)) for at, b in zip(offsets, blobs)] == blobs
    assert (folder / MARKER).is_file()


def test_another_file_put_where_a_round_file_was_is_refused_not_written_over(tmp_path):
    import pytest

    from fedge.coordinator.errors import StoreCorrupt

    folder = tmp_path / "state.db.payloads"
    log = PayloadLog(folder)
    log.append(1, [b"x" * 10])
    (folder / "round-1.log").unlink()
    (folder / "round-1.log").write_bytes(b"someone's notes")
    with pytest.raises(StoreCorrupt, match="replaced by another file"):
        log.append(1, [b"y"])
    assert (folder / "round-1.log").read_bytes() == b"someone's notes"
    log.close()


def test_a_round_files_folder_replaced_by_a_file_is_named_not_a_bare_os_error(tmp_path):
    """`<state_db>.payloads` moved away and a file made at its name: the check whether the round's
    path still names its open file raised NotADirectoryError (a bare OSError, no path, no advice);
    now the shared same_file says the path names no file, and writing the bytes back there fails
    by name (StoreCorrupt)."""
    import pytest

    from fedge.coordinator.errors import StoreCorrupt

    folder = tmp_path / "state.db.payloads"
    log = PayloadLog(folder)
    log.append(3, [b"a" * 70])
    folder.rename(tmp_path / "moved")
    folder.write_bytes(b"not a folder")
    with pytest.raises(StoreCorrupt, match=r"round-3\.log was deleted .* its 70 bytes .* cannot be written back"):
        log.append(3, [b"b"])
    assert (tmp_path / "moved" / "round-3.log").read_bytes() == b"a" * 70  # nothing written anywhere


def test_the_payload_log_and_the_state_db_share_one_same_file_check():
    """One definition of "the same file" (coordinator/same_file.py): the payload log's put-back
    and the state_db's StoreGone check ask the same function, not each its own (st_dev, st_ino)."""
    import inspect

    from fedge.coordinator import payload_log, same_file, state_file

    for module in (payload_log, state_file):
        assert "st_ino" not in inspect.getsource(module), module.__name__
    assert payload_log.same_file is same_file.same_file and state_file.file_identity is same_file.file_identity
