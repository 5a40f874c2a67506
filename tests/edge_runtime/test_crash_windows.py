"""A device killed at each point of a task, then restarted on the same state directory.

A crash is a BaseException raised at one step (nothing in the device may catch it); the
agent and runtime objects are then dropped and new ones built on the same files, as a
restarted process would be. Oracle: the same task run without a crash on a copy of the state
from before it. Whatever the crash point, after the restart either the update is kept and
the state is exactly the oracle's (and the update goes out again), or nothing of the task
was kept, the state is as before it, and the coordinator is told `interrupted`.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest

from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import decode_message
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TrainTask, Update
from fedge.edge_runtime.pending import PendingUploads
from fedge.edge_runtime.seen_tasks import SeenTasks
from fedge.edge_runtime.store import DeviceStore
from tests.coordinator.fleet import local_data, make_fleet
from tests.tiny_model import build_tiny_model

STATE_FILES = ("personal", "opt_state", "residual")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


class Crash(BaseException):
    """The process died here."""


def _agent(fleet, root, abort_check=None) -> DeviceAgent:
    art, manifest, _ = fleet.model
    runtime = DeviceRuntime("dev0", local_data(np.random.default_rng(0), 30), {manifest.model_id: art}, root, seed=0,
                            abort_check=abort_check)
    return DeviceAgent(runtime, fleet.broker.connect("dev0"), clock=fleet.clock)


def _state(root, model_id) -> dict:
    store = DeviceStore(root / "dev0", model_id)
    return {name: getattr(store, f"load_{name}")() for name in STATE_FILES}


def _same(a: dict, b: dict) -> bool:
    for name in STATE_FILES:
        if (a[name] is None) != (b[name] is None):
            return False
        if a[name] is not None and (set(a[name]) != set(b[name]) or
                                     any(not np.array_equal(a[name][k], b[name][k]) for k in a[name])):
            return False
    return True


def _setup(model, tmp_path):
    """A fleet with one real device that has trained round 1 (so it has state), round 2 open,
    its task waiting in the device's queue; a snapshot of the state from before round 2."""
    fleet = make_fleet(model, tmp_path, compression=CompressionSpec(quant_bits=8))  # lossy: a residual
    root = tmp_path / "devices"
    agent = _agent(fleet, root)
    fleet.agents.append(agent)
    agent.start()
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    assert c.tick().committed
    assert c.begin_round()  # round 2: its task is queued for the device, not yet handled
    snapshot = tmp_path / "snapshot"
    shutil.copytree(root, snapshot)
    return fleet, root, snapshot, agent


def _oracle(fleet, snapshot, task) -> dict:
    """The state after `task` on an uncrashed device, from the snapshot."""
    art, manifest, _ = fleet.model
    runtime = DeviceRuntime("dev0", local_data(np.random.default_rng(0), 30), {manifest.model_id: art}, snapshot,
                            seed=0)
    assert isinstance(runtime.handle_task(task), Update)
    return _state(snapshot, manifest.model_id)


def _restart(fleet, root) -> DeviceAgent:
    agent = _agent(fleet, root)
    fleet.agents[-1] = agent
    agent.start()
    fleet.drain()
    return agent


def _crash_in(monkeypatch, target, name, nth=1):
    """Make `target.name` raise Crash on its nth call (earlier calls run normally)."""
    real = getattr(target, name)
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            raise Crash(f"{name} #{nth}")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, crashing)


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _poll_until_crash(agent) -> None:
    with pytest.raises(Crash):
        for _ in range(100):
            agent.poll(0.0)


def _spy(fleet):
    """Decode what the spy saw so far (tasks, updates, declines)."""
    while (msg := fleet.spy.receive(0.0)) is not None:
        fleet.wire.append(decode_message(msg.payload))
    return fleet.wire


def test_a_crash_mid_training_is_declined_as_interrupted_after_the_restart(model, tmp_path):
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    agent.runtime.abort_check = lambda: (_ for _ in ()).throw(Crash("mid-training"))
    _poll_until_crash(agent)
    c = fleet.coordinator
    assert c.round.machine.declined == {} and c.round.machine.reported == []  # the round would wait

    _restart(fleet, root)
    assert c.round.machine.declined == {"dev0": "interrupted"}
    declines = [m for m in _spy(fleet) if isinstance(m, Decline)]
    assert [(d.round_id, d.reason, d.stage) for d in declines] == [(2, "interrupted", "during")]
    assert _same(_state(root, fleet.model[1].model_id), _state(snapshot, fleet.model[1].model_id))  # untouched
    _restart(fleet, root)  # once answered, a second restart says nothing more
    assert len([m for m in _spy(fleet) if isinstance(m, Decline)]) == 1


@pytest.mark.parametrize("where", ["before_keeping", "after_keeping", "mid_apply", "before_sending"])
def test_a_crash_around_keeping_the_update_never_lets_the_state_run_ahead(model, tmp_path, monkeypatch, where):
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    model_id = fleet.model[1].model_id
    if where == "before_keeping":  # state staged, the update not yet on disk
        _crash_in(monkeypatch, PendingUploads, "add")
    elif where == "after_keeping":  # the update on disk, the staged state not applied
        _crash_in(monkeypatch, DeviceStore, "commit_staged")
    elif where == "mid_apply":  # the staged file renamed to state.npz, meta.json not yet written
        _crash_in(monkeypatch, DeviceStore, "save_meta", nth=1)
    else:  # the state applied, the update on disk, not yet published
        _crash_in(monkeypatch, DeviceAgent, "_publish", nth=1)
    _poll_until_crash(agent)
    monkeypatch.undo()
    c = fleet.coordinator
    task = [m for m in _spy(fleet) if isinstance(m, TrainTask) and m.round_id == 2][-1]
    kept = PendingUploads(root / "dev0" / "pending").items()

    restarted = _restart(fleet, root)
    assert DeviceStore(root / "dev0", model_id).staged() == []  # recovery finished or undid it
    updates = [m for m in _spy(fleet) if isinstance(m, Update) and m.round_id == 2]
    declines = [m for m in _spy(fleet) if isinstance(m, Decline) and m.round_id == 2]
    if where == "before_keeping":
        assert kept == [] and updates == []
        assert _same(_state(root, model_id), _state(snapshot, model_id))  # as before the task
        assert [d.reason for d in declines] == ["interrupted"]
        assert c.round.machine.declined == {"dev0": "interrupted"}
    else:
        assert [k.round_id for k in kept] == [2]
        assert _same(_state(root, model_id), _oracle(fleet, snapshot, task))  # exactly where it would have been
        assert declines == [] and [u.update_id for u in updates] == [kept[0].update_id]  # resent at start
        assert c.round.machine.reported == ["dev0"]
        assert len(restarted.pending) == 0  # acknowledged


def test_an_unreadable_kept_update_is_set_aside_by_name_and_the_others_are_still_resent(model, tmp_path, monkeypatch):
    # A kept frame damaged on disk (a bad SD-card sector) made agent.start() raise
    # TruncatedPayload: the device never came up again, and the updates after it were not resent.
    # Then it was deleted; now it is renamed `.damaged`, kept for a person to look at.
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    _crash_in(monkeypatch, DeviceAgent, "_publish", nth=1)  # round 2's update kept, not yet sent
    _poll_until_crash(agent)
    monkeypatch.undo()
    pending = root / "dev0" / "pending"
    (kept,) = PendingUploads(pending).items()
    (pending / "r0-damaged.msg").write_bytes(b"garbage")  # listed before the good one

    restarted = _restart(fleet, root)
    assert restarted.started
    assert [u.update_id for u in _spy(fleet) if isinstance(u, Update) and u.round_id == 2] == [kept.update_id]
    assert fleet.coordinator.round.machine.reported == ["dev0"]
    assert sorted(p.name for p in pending.iterdir()) == ["r0-damaged.msg.damaged"]  # the good one acked
    assert (pending / "r0-damaged.msg.damaged").read_bytes() == b"garbage"
    assert len(_restart(fleet, root).pending) == 0  # not read back as a kept update


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "no_meta"])
def test_a_damaged_staged_state_is_set_aside_and_its_kept_update_still_goes_out(model, tmp_path, monkeypatch, damage):
    # Killed after keeping the update, before applying its staged state, which a bad sector then
    # damaged: recover() raised DeviceStateError and the device never started again.
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    model_id = fleet.model[1].model_id
    _crash_in(monkeypatch, DeviceStore, "commit_staged")
    _poll_until_crash(agent)
    monkeypatch.undo()
    (kept,) = PendingUploads(root / "dev0" / "pending").items()
    staged = DeviceStore(root / "dev0", model_id).staged_path(kept.update_id)
    whole = staged.read_bytes()
    staged.write_bytes({"garbage": b"garbage", "truncated": whole[: len(whole) // 2], "empty": b"",
                        "no_meta": _npz_bytes(x=np.ones(2))}[damage])  # readable, without what stage() writes
    damaged = staged.read_bytes()

    restarted = _restart(fleet, root)
    assert restarted.started and not staged.exists()
    assert staged.with_name(staged.name + ".damaged").read_bytes() == damaged  # kept for a person, not deleted
    assert [u.update_id for u in _spy(fleet) if isinstance(u, Update) and u.round_id == 2] == [kept.update_id]
    assert fleet.coordinator.round.machine.reported == ["dev0"] and len(restarted.pending) == 0
    assert _same(_state(root, model_id), _state(snapshot, model_id))  # as before that task


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_state_file_is_declined_by_name_and_left_as_it_is(model, tmp_path, damage):
    # state.npz unreadable (a bad sector): np.load's bare BadZipFile/ValueError/EOFError escaped
    # handle_task, the task got no answer, and every round waited for its deadline.
    fleet, root, snapshot, agent = _setup(model, tmp_path)
    path = root / "dev0" / fleet.model[1].model_id / "state.npz"
    whole = path.read_bytes()
    path.write_bytes({"garbage": b"garbage", "truncated": whole[: len(whole) // 2], "empty": b""}[damage])
    damaged = path.read_bytes()
    fleet.drain()
    declines = [m for m in _spy(fleet) if isinstance(m, Decline) and m.round_id == 2]
    assert [d.reason for d in declines] == ["bad_state"] and "state.npz" in declines[0].detail
    assert fleet.coordinator.round.machine.declined == {"dev0": "bad_state"}
    assert path.read_bytes() == damaged  # the personal params are not silently started over


def test_a_staged_state_applies_deletions_and_empty_sets_and_is_idempotent(tmp_path):
    store = DeviceStore(tmp_path, "m")
    store.save_opt_state({"w.momentum_buffer": np.ones(3, np.float32)})
    store.stage("u1", {"personal": {"p": np.arange(4, dtype=np.float32)}, "opt_state": None, "residual": {},
                       "control_undo": store.undo_arrays("u1", {"c": np.ones(2)}, None)}, {"last_round": 7})
    assert store.staged() == ["u1"] and store.load_personal() is None  # nothing applied yet
    store.commit_staged("u1")
    store.commit_staged("u1")  # a repeat after a crash does nothing more
    assert np.array_equal(store.load_personal()["p"], np.arange(4))
    assert store.load_opt_state() is None and store.load_residual() == {}
    assert store.load_control_undo()[0] == "u1" and store.load_meta() == {"last_round": 7}
    assert store.staged() == []


def test_seen_tasks_survive_a_restart_and_read_the_older_file(tmp_path):
    path = tmp_path / "seen_tasks.json"
    path.write_text('["old-1", "old-2"]')  # before rounds were kept: taken as answered
    seen = SeenTasks(path, kept=3)
    assert "old-1" in seen and seen.unanswered() == []
    seen.add("t3", 3)
    seen.add("t4", 4)
    seen.answered("t3")
    again = SeenTasks(path, kept=3)  # a restart
    assert "old-1" not in again and "old-2" in again  # only the newest 3 are kept
    assert again.unanswered() == [("t4", 4)]


def test_pending_age_is_measured_on_the_injected_clock_across_a_restart(tmp_path):
    clock = ManualClock()
    pending = PendingUploads(tmp_path, clock)
    pending.add(1, "old", b"a")
    clock.advance(50.0)
    pending.add(2, "new", b"b")
    clock.advance(30.0)  # "old" was kept 80 s ago, "new" 30 s ago
    assert [p.update_id for p in pending.older_than(60.0)] == ["old"]
    assert [p.update_id for p in pending.older_than(20.0)] == ["old", "new"]  # oldest first
    assert pending.older_than(80.0) == []  # strictly older
    again = PendingUploads(tmp_path, clock)  # a restart reads the ages back from the files
    clock.advance(1000.0)
    assert [p.update_id for p in again.older_than(1000.0)] == ["old", "new"]
    assert [p.update_id for p in again.older_than(1050.0)] == ["old"]


def test_seen_task_rows_of_shapes_fedge_never_writes_are_skipped_not_fatal(tmp_path):
    """A seen_tasks.json row like {"a": 1} stopped the device's start with a KeyError, and a string
    round id failed later in a %d log line (found by the device helper). Such rows are skipped;
    the rows fedge writes, and an older file's bare task ids, still load."""
    from fedge.edge_runtime.seen_tasks import SeenTasks

    path = tmp_path / "seen_tasks.json"
    path.write_text(json.dumps([{"a": 1}, ["t1", "7", False], ["t2", 3, False], ["t3", 4, True], "t0",
                                ["t4", True, False], [1, 2], None]))
    seen = SeenTasks(path)
    assert [t for t in ("t0", "t1", "t2", "t3", "t4") if t in seen] == ["t0", "t2", "t3"]
    assert seen.unanswered() == [("t2", 3)]
    path.write_text(json.dumps({"not": "a list"}))
    assert SeenTasks(path).unanswered() == []
