"""Group commit (coordinator/group_commit.py): a burst's accepted updates are stored in one
transaction, and no Ack leaves before the update it answers is in the store.

Oracles: the store itself (each Ack, as it is published, must find its update there), the
transactions a counting store sees, and the committed params against the FedAvg of the wire
deltas (fleet.fedavg_oracle), after a failed group commit and a restart as after a crash.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.async_mode.journal import open_journal
from fedge.coordinator.errors import GroupCommitFailed
from fedge.coordinator.group_commit import GroupCommit
from fedge.coordinator.loop import CoordinatorLoop
from fedge.coordinator.memory_store import MemoryStore
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import decode_message, encode_message
from fedge.edge_runtime.kernel.protocol import Ack
from tests.coordinator.fleet import (
    ManualDevice,
    assert_params,
    copy_params,
    fedavg_oracle,
    make_fleet,
    random_delta,
)
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


class CountingStore(RoundStore):
    """A RoundStore that records every add_update call, and can be told to fail them."""

    def __init__(self, path):
        super().__init__(path)
        self.calls: list[int] = []  # updates per add_update call (one transaction each)
        self.fail = False

    def add_update(self, round_id, *updates):
        if self.fail:
            raise OSError("disk full")
        self.calls.append(len(updates))
        super().add_update(round_id, *updates)


def _fleet(model, tmp_path, devices=4):
    store = CountingStore(tmp_path / "state.db")
    fleet = make_fleet(model, tmp_path, clients_per_round=devices, store=store)
    manual = [ManualDevice(fleet, f"m{i}", 5 + i) for i in range(devices)]
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    return fleet, store, manual


def _watch_acks(fleet, store):
    """Every Ack, at the moment it is published, with whether its update was in the store then."""
    seen = []
    transport = fleet.coordinator.transport
    publish = transport.publish

    def checking(topic, payload, **kwargs):
        message = decode_message(payload)
        if isinstance(message, Ack):
            stored = store.counted_digest(message.device_id, message.round_id, message.update_id) is not None
            seen.append((message.device_id, message.accepted, message.reason, stored))
        return publish(topic, payload, **kwargs)

    transport.publish = checking
    return seen


def test_a_burst_stores_its_updates_in_one_transaction_before_any_ack(model, tmp_path):
    fleet, store, manual = _fleet(model, tmp_path)
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    rng = np.random.default_rng(0)
    old = copy_params(c.state.params)
    updates = [m.update(random_delta(shapes, rng)) for m in manual]
    for m, u in zip(manual, updates):
        m.send(encode_message(u))
    manual[0].send(encode_message(updates[0]))  # a copy inside the same burst: a duplicate
    acks = _watch_acks(fleet, store)
    with c.store.burst():
        while c.pump(0.0):
            assert not acks  # nothing leaves while the burst's updates wait
    assert store.calls == [4] and c.store.bursts == 1
    assert len(acks) == 5 and all(stored for *_, stored in acks)  # each Ack found its update stored
    assert sorted((d, ok, why) for d, ok, why, _ in acks) == sorted(
        [(m.id, True, "") for m in manual] + [("m0", True, "duplicate")])
    record = c.tick()
    assert record.committed and record.reports == 4
    assert_params(c.state.params, fedavg_oracle(old, updates))


def test_outside_a_burst_each_update_is_written_and_acked_at_once(model, tmp_path):
    fleet, store, manual = _fleet(model, tmp_path, devices=2)
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(1)
    for m in manual:
        m.send(encode_message(m.update(random_delta(shapes, rng))))
    acks = _watch_acks(fleet, store)
    while fleet.coordinator.pump(0.0):
        pass
    assert store.calls == [1, 1] and [stored for *_, stored in acks] == [True, True]


def test_a_failed_group_commit_stops_the_loop_acks_nothing_and_a_restart_loses_nothing(model, tmp_path):
    fleet, store, manual = _fleet(model, tmp_path, devices=3)
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    rng = np.random.default_rng(2)
    old = copy_params(c.state.params)
    updates = [m.update(random_delta(shapes, rng)) for m in manual]
    m0, rest = manual[0], manual[1:]
    m0.send(encode_message(updates[0]))
    with c.store.burst():  # the first update is stored and acked
        assert c.pump(0.0)
    assert store.calls == [1] and m0.acks() == [(True, "")]
    for m, u in zip(rest, updates[1:]):
        m.send(encode_message(u))
    store.fail = True
    loop = CoordinatorLoop(c, poll_s=0.0)
    loop._started = True  # started above
    with pytest.raises(GroupCommitFailed, match="2 accepted updates of round 1 could not be stored"):
        loop.run()
    assert all(m.acks() == [] for m in rest)  # no Ack for what was not stored

    store.fail = False
    again = fleet.restart(store=CountingStore(tmp_path / "state.db"))  # as a supervisor would
    assert again.round is not None and again.round.machine.reported == ["m0"]  # only what was durable
    for m, u in zip(rest, updates[1:]):  # the devices resend what was never acked
        m.send(encode_message(u))
    m0.send(encode_message(updates[0]))  # and a late copy of the acked one
    fleet.drain()
    assert again.rejections["duplicate"] == 1
    record = again.tick()
    assert record.committed and record.reports == 3
    assert_params(again.state.params, fedavg_oracle(old, updates))  # each update counted once


def test_the_async_journal_belongs_to_the_store_not_its_burst_wrapper():
    """A coordinator rebuilt on the same MemoryStore (a restart in memory) finds the async buffer's journal."""
    memory = MemoryStore()
    first, second = open_journal(GroupCommit(memory)), open_journal(GroupCommit(memory))
    assert first is second and open_journal(memory) is first
