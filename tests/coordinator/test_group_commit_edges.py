"""GroupCommit's order of writes (coordinator/group_commit.py) against a store that records its
calls, found blind by benchmarks/results/2026-12-06-mutation6-async: the updates a burst holds
for one round are written under that round's id before an update of the next round joins the
burst, and before any other store call reads or writes; each Ack leaves after its write."""

from __future__ import annotations

from fedge.coordinator.group_commit import GroupCommit
from fedge.coordinator.stored import StoredUpdate


class Recorder:
    """A store that records each call: (name, args)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def add_update(self, round_id, *updates):
        self.calls.append(("add_update", round_id, tuple(u.update_id for u in updates)))

    def load_open_round(self):
        self.calls.append(("load_open_round",))


def _update(name: str) -> StoredUpdate:
    return StoredUpdate(0, "d", name, "f" * 64, 1, b"x")


def test_a_burst_writes_each_rounds_updates_under_that_round_before_the_next_round_and_any_read():
    store, acks = Recorder(), []
    gc = GroupCommit(store)
    with gc.burst():
        gc.add_update(1, _update("a"))
        gc.defer(lambda: acks.append(("ack", "a", len(store.calls))))
        gc.add_update(1, _update("b"))
        gc.add_update(2, _update("c"))  # the buffer flushed and the next opened inside one burst
        gc.defer(lambda: acks.append(("ack", "c", len(store.calls))))
        gc.load_open_round()
        gc.add_update(2, _update("d"))
    assert store.calls == [("add_update", 1, ("a", "b")), ("add_update", 2, ("c",)), ("load_open_round",),
                           ("add_update", 2, ("d",))]
    assert acks == [("ack", "a", 1), ("ack", "c", 2)]  # each after the write that holds its update
