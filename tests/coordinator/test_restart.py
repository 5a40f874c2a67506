"""A coordinator killed at any step of a round and restarted on the same state file.

The kill is simulated by a store that raises a BaseException just before or just after one
of its writes: the Coordinator object is then dropped mid-statement, without cleanup, and a
new one is built on the same SQLite file, as a restarted process would be. Devices behave
as the agent does: they keep an update until an Ack accepts it and re-publish it after a
restart.

Oracle: the same script run without any crash and without any store. The committed params
must be bit-identical to it (the restart replays updates in acceptance order), each update
counted once, and no committed round lost.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.store import RoundStore, open_store
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import ANNOUNCE_TOPIC, Decline, TrainTask
from tests.coordinator.fleet import ManualDevice, assert_params, copy_params, fedavg_oracle, make_fleet, random_delta
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


class Killed(BaseException):
    """The process died here: nothing in the coordinator may catch it."""


class CrashingStore(RoundStore):
    """A RoundStore that dies before or after the nth call of one write method."""

    def __init__(self, path, method: str, when: str, nth: int = 1):
        super().__init__(path)
        self.method, self.when, self.nth, self.calls = method, when, nth, 0
        original = getattr(self, method)

        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.calls == self.nth and self.when == "before":
                raise Killed(f"before {method}")
            original(*args, **kwargs)
            if self.calls == self.nth and self.when == "after":
                raise Killed(f"after {method}")

        setattr(self, method, wrapped)


CRASH_POINTS = [
    ("open_round", "before", 1), ("open_round", "after", 1),
    ("add_update", "before", 2), ("add_update", "after", 2),
    ("add_decline", "before", 1), ("add_decline", "after", 1),
    ("commit_round", "before", 1), ("commit_round", "after", 1),
]
REPORTERS, DECLINER = ("d0", "d1", "d2"), "d3"


def _run(model, tmp_path, store=None):
    """d0..d2 report, d3 declines; a round of target 3 commits. Returns (fleet, devices, deltas, crashes)."""
    fleet = make_fleet(model, tmp_path, clients_per_round=3, min_reports=2, over_selection=1.5, store=store)
    devices = {d: ManualDevice(fleet, d, n) for d, n in zip(REPORTERS + (DECLINER,), (7, 19, 4, 11))}
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(42)
    deltas = {d: random_delta(shapes, rng) for d in REPORTERS}
    crashes = 0
    steps = [fleet.coordinator.begin_round] + [lambda d=d: _answer(fleet, devices[d], deltas) for d in
                                               ("d0", "d1", DECLINER, "d2")]
    for step in steps:
        try:
            step()
            fleet.drain()
        except Killed:
            crashes += 1
            break
    else:
        try:
            assert fleet.coordinator.tick().committed
        except Killed:
            crashes += 1
    if crashes:
        path = fleet.coordinator.store.path
        fleet.restart(store=RoundStore(path))
        _recover(fleet, devices, deltas)
    return fleet, devices, deltas, crashes


def _answer(fleet, device, deltas) -> None:
    """What an agent does with its task: send the update (or decline) unless an Ack accepted it."""
    task = device.task()
    if device.id == DECLINER:
        device.send(encode_message(Decline(device.id, task.round_id, task.task_id, "battery_low")))
    elif (True, "") not in device.acks() and (True, "duplicate") not in device.acks():
        device.send(encode_message(device.update(deltas[device.id], update_id=f"u-{device.id}")))


def _recover(fleet, devices, deltas) -> None:
    c = fleet.coordinator
    if c.round is None and c.state.version == 0:  # the round never reached the store
        assert c.begin_round()
    fleet.drain()
    for d in ("d0", "d1", DECLINER, "d2"):  # the same order: the mean must come out bit-identical
        if c.round is not None:
            _answer(fleet, devices[d], deltas)
            fleet.drain()
    if c.round is not None:
        assert c.tick().committed


@pytest.mark.parametrize("method,when,nth", CRASH_POINTS, ids=[f"{w}-{m}" for m, w, _ in CRASH_POINTS])
def test_kill_at_any_step_resumes_and_commits_the_same_bits(model, tmp_path, method, when, nth):
    ref, _, deltas, _ = _run(model, tmp_path / "ref")
    fleet, devices, _, crashes = _run(model, tmp_path / "crash",
                                      store=CrashingStore(tmp_path / "state.db", method, when, nth))
    assert crashes == 1
    c = fleet.coordinator
    assert c.state.version == 1 and c.round is None and c.next_round_id == 2
    for name, value in ref.coordinator.state.params.items():
        assert c.state.params[name].tobytes() == value.tobytes(), name
    # The only update whose Ack the kill swallowed comes back as a duplicate, and so does d3's decline
    # where the store held it when d3 sent it again (unanswered, as a fedge device repeats it when its
    # task comes again); nothing is counted twice.
    resent = {("add_update", "after"), ("add_decline", "after"), ("commit_round", "before")}
    assert c.rejections == ({"duplicate": 1} if (method, when) in resent else {})
    for d in REPORTERS:
        assert any(ok for ok, _ in devices[d].acks()), d
    # Nothing was lost either: a fresh process sees the committed version.
    again = fleet.restart(store=RoundStore(tmp_path / "state.db"))
    assert again.state.version == 1 and again.round is None and again.next_round_id == 2
    for name, value in ref.coordinator.state.params.items():
        assert again.state.params[name].tobytes() == value.tobytes(), name


def test_resumed_round_has_the_same_tasks_and_an_identical_accumulator(model, tmp_path):
    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=3, store=RoundStore(path))
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate((5, 8, 13))]
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(7)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    updates = [m.update(random_delta(shapes, rng), update_id=f"x{i}") for i, m in enumerate(devices)]
    for m, u in zip(devices[:2], updates[:2]):
        m.send(encode_message(u))
    fleet.drain()
    old = fleet.coordinator.round
    old_sums = {k: v.copy() for k, v in old.aggregator.mean.sums.items()}

    new = fleet.restart(store=RoundStore(path))  # the old object is dropped mid-round, never closed
    rnd = new.round
    assert rnd.ctx.round_id == old.ctx.round_id and rnd.ctx.tasks == old.ctx.tasks
    assert rnd.machine.reported == ["m0", "m1"] and rnd.seen == old.seen
    assert rnd.aggregator.count == 2 and rnd.aggregator.mean.total_weight == old.aggregator.mean.total_weight
    for name, value in old_sums.items():
        assert rnd.aggregator.mean.sums[name].tobytes() == value.tobytes(), name
    # The silent device gets its task again, with the same task id; the others do not.
    fleet.drain()
    tasks = [m.task() for m in devices]
    assert tasks[2].task_id == old.ctx.tasks["m2"] and sum(
        1 for t in devices[2].inbox if isinstance(t, TrainTask)) == 2
    assert sum(1 for t in devices[0].inbox if isinstance(t, TrainTask)) == 1

    # A re-publish after the restart is a duplicate: acked as accepted, not added twice.
    devices[0].send(encode_message(updates[0]))
    fleet.drain()
    assert devices[0].acks()[-1] == (True, "duplicate") and rnd.aggregator.count == 2
    old_params = copy_params(new.state.params)
    devices[2].send(encode_message(updates[2]))
    fleet.drain()
    record = new.tick()
    assert record.committed and record.round_id == 1 and record.reports == 3
    assert_params(new.state.params, fedavg_oracle(old_params, updates))
    # ...and the service goes on with the next round.
    assert new.begin_round() and new.round.ctx.round_id == 2


def test_a_deadline_that_passed_while_down_closes_the_round_and_the_next_id_follows(model, tmp_path):
    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=3, round_deadline_s=100.0, store=RoundStore(path))
    devices = [ManualDevice(fleet, f"m{i}", 3) for i in range(3)]
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    fleet.coordinator.begin_round()
    fleet.drain()
    devices[0].send(encode_message(devices[0].update(random_delta(shapes, np.random.default_rng(0)))))
    fleet.drain()
    fleet.clock.advance(250.0)  # down for longer than the round had left

    new = fleet.restart(store=RoundStore(path))
    assert new.round is not None and new.round.machine.deadline <= fleet.clock.now()
    record = new.tick()
    assert not record.committed and record.round_id == 1 and record.reports == 1
    assert new.state.version == 0 and new.next_round_id == 2
    # The registry came back from the file: a round can start before anyone checks in again.
    third = fleet.restart(store=RoundStore(path))
    assert sorted(third.eligible_devices()) == ["m0", "m1", "m2"]
    assert third.begin_round() and third.round.ctx.round_id == 2
    assert [r["round_id"] for r in third.store.round_records()] == [1]


@pytest.mark.parametrize("with_store", [True, False])
def test_late_republish_of_a_committed_update_is_acked_as_a_duplicate(model, tmp_path, with_store):
    store = RoundStore(tmp_path / "state.db") if with_store else None
    fleet = make_fleet(model, tmp_path, clients_per_round=1, store=store)
    m0 = ManualDevice(fleet, "m0", 3)
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    fleet.coordinator.begin_round()
    fleet.drain()
    update = m0.update(random_delta(shapes, np.random.default_rng(0)))
    m0.send(encode_message(update))
    fleet.drain()
    assert fleet.coordinator.tick().committed
    if with_store:  # and across a restart, from the kept keys
        fleet.restart(store=RoundStore(tmp_path / "state.db"))
    m0.send(encode_message(update))
    m0.send(encode_message(dataclasses.replace(update, update_id="never-counted")))
    fleet.drain()
    assert m0.acks()[-2:] == [(True, "duplicate"), (False, "stale_round")]
    other_payload = dataclasses.replace(update, payload=update.payload[:-8] + bytes(8))
    m0.send(encode_message(other_payload))
    fleet.drain()
    assert m0.acks()[-1] == (False, "conflicting_duplicate")
    assert fleet.coordinator.state.version == 1


def test_real_agents_republish_after_a_restart_and_the_round_commits(model, tmp_path):
    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, sizes=(10, 20, 35), store=RoundStore(path))
    old = copy_params(fleet.coordinator.state.params)
    fleet.coordinator.begin_round()
    fleet.coordinator.pump(0.0)  # nothing inbound yet; tasks are queued at the agents
    for agent in fleet.agents:
        while agent.poll(0.0):
            pass
    assert all(len(a.pending) == 1 for a in fleet.agents)
    fleet.coordinator.pump(0.0)  # one update is accepted and stored; the process dies here
    new = fleet.restart(store=RoundStore(path))
    assert len(new.round.machine.reported) == 1
    for agent in fleet.agents:
        agent.republish_pending()
    fleet.drain()
    record = new.tick()
    assert record.committed and record.reports == 3
    assert all(not a.pending for a in fleet.agents)
    # The update stored before the kill comes back as a duplicate (acked, not re-added); so do the
    # others' answers to the tasks the resumed round sends again.
    assert set(new.rejections) == {"duplicate"} and new.rejections["duplicate"] >= 1
    unique = {(u.device_id, u.update_id): u for u in fleet.updates()}
    assert len(unique) == 3
    assert_params(new.state.params, fedavg_oracle(old, list(unique.values())))


def test_after_a_broker_outage_the_open_tasks_and_the_announcement_are_sent_again(model, tmp_path):
    """A broker killed with -9 loses PUBACKed QoS 1 messages: on_reconnect resends what may be gone."""
    fleet = make_fleet(model, tmp_path, clients_per_round=3, task_resend_s=1000.0)
    devices = [ManualDevice(fleet, f"m{i}", 3) for i in range(3)]
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    fleet.coordinator.begin_round()
    fleet.drain()
    first = [m.task() for m in devices]
    devices[0].send(encode_message(devices[0].update(random_delta(shapes, np.random.default_rng(0)))))
    fleet.drain()
    watcher = fleet.broker.connect("watcher")
    watcher.subscribe(ANNOUNCE_TOPIC)
    watcher.receive(0.0)  # the retained one

    fleet.coordinator.on_reconnect()  # even inside task_resend_s: the broker may have dropped them
    fleet.drain()
    for m, task in zip(devices, first):
        m.receive()
        again = [t for t in m.inbox if isinstance(t, TrainTask)]
        assert len(again) == (1 if m.id == "m0" else 2)  # m0 has reported: nothing to resend
        assert {t.task_id for t in again} == {task.task_id}
    assert watcher.receive(0.0) is not None  # the announcement went out again


def test_open_store_follows_the_config(tmp_path):
    assert open_store(CoordinatorConfig()) is None
    store = open_store(CoordinatorConfig(state_db=str(tmp_path / "s.db"), keep_versions=5))
    assert store.keep_versions == 5 and (tmp_path / "s.db").exists()


def test_a_stored_payload_whose_bytes_changed_on_disk_stops_the_restart_by_name(model, tmp_path):
    """Oracle: the digest admit() stored; the log's bytes are changed by one bit, same length."""
    from fedge.coordinator.errors import StoreCorrupt

    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=3, store=RoundStore(path))
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate((5, 8, 13))]
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    assert fleet.coordinator.begin_round()
    fleet.drain()
    devices[0].send(encode_message(devices[0].update(random_delta(shapes, np.random.default_rng(3)), update_id="x0")))
    fleet.drain()
    assert fleet.coordinator.round.aggregator.count == 1
    fleet.restart(store=RoundStore(path))  # the bytes as written: resumes
    log = next((tmp_path / "state.db.payloads").glob("round-*.log"))
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x01
    log.write_bytes(bytes(data))
    with pytest.raises(StoreCorrupt, match="digest"):
        fleet.restart(store=RoundStore(path))
