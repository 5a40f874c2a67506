"""An async coordinator killed at any write of a buffer's life and restarted on the same file.

The kill is the sync drill's (test_restart.py): a store or journal raises a BaseException
just before or just after one write, the AsyncCoordinator is dropped mid-statement, and a new
one is built on the same SQLite file. Devices behave as agents do: they keep an update until
an Ack accepts it and re-publish it after the restart.

Oracle: the same script without any crash. The committed params must be bit-identical (the
buffer replays in acceptance order with its stored staleness), each update counted once (a
swallowed Ack comes back as one duplicate), and the flush committed exactly once.
"""

from __future__ import annotations

import numpy as np
import pytest

import fedge.coordinator.async_mode.server as async_server
from fedge.coordinator.async_mode.config import AsyncConfig
from fedge.coordinator.async_mode.journal import SqliteJournal
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.coordinator.test_restart import CrashingStore, Killed
from tests.tiny_model import build_tiny_model

REPORTERS = ("d0", "d1", "d2")
SIZES = (7, 19, 4, 11)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


class CrashingJournal(SqliteJournal):
    """A SqliteJournal that dies before or after the nth call of one write method."""

    def __init__(self, path, method: str, when: str, nth: int):
        super().__init__(path)
        original, calls = getattr(self, method), [0]

        def wrapped(*args, **kwargs):
            calls[0] += 1
            if calls[0] == nth and when == "before":
                raise Killed(f"before {method}")
            original(*args, **kwargs)
            if calls[0] == nth and when == "after":
                raise Killed(f"after {method}")

        setattr(self, method, wrapped)


CRASH_POINTS = [
    ("journal", "add_task", "before", 1), ("journal", "add_task", "after", 3),
    ("journal", "add_update", "before", 2), ("journal", "add_update", "after", 2),
    ("journal", "add_update", "after", 3),
    ("store", "open_round", "before", 1), ("store", "open_round", "after", 1),
    ("store", "commit_round", "before", 1), ("store", "commit_round", "after", 1),
]


def _answer(fleet, device, deltas) -> None:
    """An agent's behaviour: train once on its task, keep the update, re-publish that same
    update until an Ack accepts it."""
    if not hasattr(device, "kept"):
        device.kept = device.update(deltas[device.id], update_id=f"u-{device.id}")
    if not any(ok for ok, _ in device.acks()):
        device.send(encode_message(device.kept))


def _script(fleet, devices, deltas):
    c = fleet.coordinator
    if c.round is None and c.state.version == 0:
        assert c.begin_round()
    c.tick()  # dispatch (or flush a full buffer resumed after a kill)
    fleet.drain()
    for d in REPORTERS:  # the same order every time: the buffer's sum comes out bit-identical
        _answer(fleet, devices[d], deltas)
        fleet.drain()


def _run(model, tmp_path, monkeypatch, crash=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    db = tmp_path / "state.db"
    kind, method, when, nth = crash or (None, None, None, None)
    store = CrashingStore(db, method, when, nth) if kind == "store" else RoundStore(db)
    if kind == "journal":
        monkeypatch.setattr(async_server, "open_journal", lambda s: CrashingJournal(s.path, method, when, nth))
    fleet = make_fleet(model, tmp_path, store=store, mode="async",
                       async_=AsyncConfig(concurrency=4, buffer_size=3, max_staleness=2))
    devices = {f"d{i}": ManualDevice(fleet, f"d{i}", n) for i, n in enumerate(SIZES)}
    fleet.drain()
    rng = np.random.default_rng(42)
    deltas = {d: random_delta(fleet.coordinator.shapes, rng) for d in REPORTERS}
    crashes = 0
    try:
        _script(fleet, devices, deltas)
    except Killed:
        crashes = 1
        monkeypatch.undo()
        fleet.restart(store=RoundStore(db))
        _script(fleet, devices, deltas)
    return fleet, devices, crashes


@pytest.mark.parametrize("crash", CRASH_POINTS, ids=[f"{w}-{m}-{n}" for _, m, w, n in CRASH_POINTS])
def test_kill_at_any_write_resumes_and_commits_the_same_bits(model, tmp_path, monkeypatch, crash):
    ref, _, _ = _run(model, tmp_path / "ref", monkeypatch)
    assert ref.coordinator.state.version == 1
    fleet, devices, crashes = _run(model, tmp_path / "crash", monkeypatch, crash)
    assert crashes == 1
    c = fleet.coordinator
    assert c.state.version == 1
    for name, value in ref.coordinator.state.params.items():
        assert c.state.params[name].tobytes() == value.tobytes(), name
    swallowed = crash[1:3] == ("add_update", "after")  # durable, its Ack never left: re-sent, a duplicate
    assert c.rejections.get("duplicate", 0) == (1 if swallowed else 0)
    for d in REPORTERS:
        assert any(ok for ok, _ in devices[d].acks()), d
    records = RoundStore(tmp_path / "crash" / "state.db").round_records()
    assert [r["reports"] for r in records if r["committed"]] == [3]  # one flush, three updates, once each


def test_an_update_that_comes_before_the_first_tick_after_a_kill_at_a_full_buffer_opens_the_next(
        model, tmp_path, monkeypatch):
    """Killed after the K-th update was durable, before the flush: the restart resumes a full
    buffer. An update from another task in flight that arrives before the first tick must go
    to the next buffer, one version staler, as it would have without the kill; it once made
    the resumed buffer K + 1 updates and was weighted as fresh. Oracle: the same run, no kill."""

    def run(root, crash):
        root.mkdir()
        db = root / "state.db"
        if crash:  # the third add_update (the K-th update) is written, then the process dies
            monkeypatch.setattr(async_server, "open_journal", lambda s: CrashingJournal(s.path, "add_update",
                                                                                        "after", 3))
        fleet = make_fleet(model, root, store=RoundStore(db), mode="async",
                           async_=AsyncConfig(concurrency=4, buffer_size=3, max_staleness=2))
        devices = [ManualDevice(fleet, f"d{i}", n) for i, n in enumerate(SIZES)]
        fleet.drain()
        assert fleet.coordinator.begin_round()
        fleet.coordinator.tick()
        fleet.drain()
        rng = np.random.default_rng(7)
        updates = [d.update(random_delta(fleet.coordinator.shapes, rng), update_id=f"u-{d.id}") for d in devices]
        try:
            for u, d in zip(updates[:3], devices):
                d.send(encode_message(u))
                fleet.drain()
        except Killed:
            monkeypatch.undo()
            fleet.restart(store=RoundStore(db))
        devices[3].send(encode_message(updates[3]))  # before any tick of the restarted coordinator
        fleet.drain()
        fleet.coordinator.tick()
        return fleet.coordinator, SqliteJournal(db)

    ref, ref_journal = run(tmp_path / "ref", False)
    c, journal = run(tmp_path / "crash", True)
    assert ref.state.version == c.state.version == 1
    for name, value in ref.state.params.items():
        assert c.state.params[name].tobytes() == value.tobytes(), name
    assert [r["reports"] for r in c.store.round_records() if r["committed"]] == [3]
    # d3's update waits in buffer 2, accepted one version stale, as in the run without the kill
    assert [(r.device_id, r.staleness) for r in journal.buffered(2)] == [("d3", 1)]
    assert [(r.device_id, r.staleness) for r in ref_journal.buffered(2)] == [("d3", 1)]
    assert c.machine.buffered == 1
