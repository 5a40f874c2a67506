"""The Store contract under kill -9, for SQLite and PostgreSQL, with the same script (store_ops.py).

Oracle: a clean in-process run of the script, snapshotting the observable state after every
operation; the clean runs of all three stores must agree snapshot for snapshot. Then for
every i a child process runs the script and is SIGKILLed:

* between operations: right after operation i returned. Reopened, the store must show the
  clean run's state after i: everything acknowledged is durable.
* during operation i: as soon as it says it is starting it (where the kill lands inside it
  is up to the scheduler). Reopened, the store must show the state before i or after i,
  never one in between (no half-applied commit).

After each operation the child blocks on a pipe until told to go on, so it never runs past
the operation it is to be killed at.

The child is forked (multiprocessing "fork"), not spawned: it starts in milliseconds, so the
2 x 25 kill points per database cost seconds. Nothing is open in the parent when it forks.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest

from tests.coordinator import store_ops

FORK = multiprocessing.get_context("fork")
TIMEOUT_S = 30


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path):
    """(kind, fresh() -> a new empty database's location)."""
    if request.param == "postgres":
        server = request.getfixturevalue("postgres_server")
        return "postgres", server.create_database
    names = iter(range(10_000))
    return "sqlite", lambda: str(tmp_path / f"state{next(names)}.db")


def _clean_run(kind: str, where: str) -> list[tuple]:
    store = store_ops.open_store(kind, where)
    try:
        return store_ops.clean_run(store)
    finally:
        store.close()


def _kill_at(kind: str, where: str, kill_at: int, between: bool) -> None:
    """Run the script in a child and SIGKILL it after (between) or as it starts (not between) op kill_at."""
    parent, child_end = FORK.Pipe()
    proc = FORK.Process(target=store_ops.child, args=(kind, where, child_end), daemon=True)
    proc.start()
    try:
        while True:
            assert parent.poll(TIMEOUT_S), f"the child said nothing for {TIMEOUT_S} s"
            what, i = parent.recv()
            if i == kill_at and what == ("done" if between else "start"):
                os.kill(proc.pid, signal.SIGKILL)
                break
            if what == "done":
                parent.send("go")
        proc.join(TIMEOUT_S)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
        parent.close()
        child_end.close()


def test_clean_runs_agree_across_sqlite_postgres_and_memory(postgres_server, tmp_path):
    sqlite = _clean_run("sqlite", str(tmp_path / "clean.db"))
    postgres = _clean_run("postgres", postgres_server.create_database())
    memory = _clean_run("memory", "")
    assert len(sqlite) == len(store_ops.OPS) + 1
    for i, (name, _) in enumerate(store_ops.OPS, start=1):
        assert sqlite[i] == postgres[i] == memory[i], f"after operation {i - 1} ({name})"
    assert sqlite[-1][0][0] == 3 and [r["round_id"] for r in sqlite[-1][3]] == [3, 4]  # keep_rounds = 2


@pytest.mark.parametrize("between", [True, False], ids=["between-ops", "during-op"])
def test_kill9_at_every_operation_leaves_a_state_of_the_clean_run(backend, between):
    kind, fresh = backend
    expected = _clean_run(kind, fresh())
    for i, (name, _) in enumerate(store_ops.OPS):
        where = fresh()
        _kill_at(kind, where, i, between)
        got = _clean_run_prefix_state(kind, where)
        allowed = [expected[i + 1]] if between else [expected[i], expected[i + 1]]
        assert got in allowed, f"{kind}: killed {'after' if between else 'during'} operation {i} ({name})"


def _clean_run_prefix_state(kind: str, where: str) -> tuple:
    store = store_ops.open_store(kind, where)
    try:
        return store_ops.snapshot(store)
    finally:
        store.close()
