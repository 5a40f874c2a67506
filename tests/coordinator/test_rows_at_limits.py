"""Rows read back exactly at the limits of what fedge writes (row_check.py, store_rows.py): each
kind of column at its edge (0 and -1 for a count, NaN and Inf, 1.0 or True for a flag), and an
open round one step past each rule its docstring states (quorum <= target <= selected, a task
for each selected device and no other, each seq once, 0 and 0 only in a noise-only round, a
tensor of exactly the bytes its shape and dtype say). The row one step inside is read back as
written (the oracle); the one past it is StoreCorrupt naming file, table, column and row."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fedge.coordinator import row_check as rc
from fedge.coordinator import store_rows
from fedge.coordinator.errors import StoreCorrupt
from fedge.coordinator.stored import StoredDecline, StoredUpdate

# kind -> (values fedge writes, values it never writes), each at the kind's edge
EDGES = {
    rc.COUNT: ([0, 1, 2**62], [-1, True, 1.0, "1", None]),
    rc.POSITIVE: ([1], [0, -1, True]),
    rc.FINITE: ([0, -1.5, 1e308], [math.nan, math.inf, -math.inf, True, "1"]),
    rc.NORM_OR_NULL: ([None, 0, 0.0, 3.5], [-0.5, -1, math.inf, math.nan, True]),
    rc.COUNT_OR_NULL: ([None, 0], [-1, 0.0]),
    rc.FLAG: ([0, 1], [1.0, 0.0, True, False, 2, -1, None]),
    rc.BYTES_OR_NULL: ([None, b""], ["", 0]),
}


@pytest.mark.parametrize("kind", EDGES)
def test_each_kind_holds_exactly_what_fedge_writes(kind):
    good, bad = EDGES[kind]
    assert [v for v in good if not rc.holds(v, kind)] == []
    assert [v for v in bad if rc.holds(v, kind)] == []


def _row(selected=("a", "b", "c"), tasks=None, target=2, quorum=1):
    tasks = {d: f"t-{d}" for d in selected} if tasks is None else tasks
    return (4, 3, json.dumps(list(selected)), json.dumps(tasks), target, quorum, 1000.0, 1600.0)


def _update(seq, device="a"):
    return StoredUpdate(seq, device, f"u{seq}", "digest", 5, b"p")


def _read(row, privacy=None, updates=(), declines=()):
    return store_rows.open_round("state.db", row, privacy, list(updates), list(declines))


def _refused(column, row, privacy=None, updates=(), declines=(), table="rounds"):
    with pytest.raises(StoreCorrupt, match=rf"state\.db: {table}\.{column} holds .*\(open round 4\)"):
        _read(row, privacy, updates, declines)


def test_quorum_at_most_the_target_and_the_target_at_most_the_selected():
    assert _read(_row(target=3, quorum=3)).quorum == 3  # both at their limit: as begin_round may write
    _refused("quorum", _row(target=2, quorum=3))
    _refused("target", _row(target=4, quorum=1))


def test_a_task_for_each_selected_device_and_no_other():
    _refused("tasks", _row(tasks={"a": "t", "b": "t", "c": "t", "d": "t"}))
    _refused("tasks", _row(tasks={"a": "t", "b": "t"}))


def test_each_seq_once_even_for_the_first_two_events():
    read = _read(_row(), updates=[_update(0), _update(1, "b")], declines=[StoredDecline(2, "c", "busy")])
    assert [e.seq for e in read.events] == [0, 1, 2]
    _refused("seq", _row(), updates=[_update(0), _update(1, "b")], declines=[StoredDecline(0, "c", "busy")],
             table="(updates|declines)")


def test_a_target_or_quorum_of_0_needs_both_0_and_a_plan():
    plan = json.dumps({"sampling": "poisson"})
    assert _read(_row(selected=(), target=0, quorum=0), privacy=plan).target == 0  # noise_round.py writes this
    _refused("quorum", _row(selected=(), target=2, quorum=0), privacy=plan)
    _refused("target", _row(selected=(), target=0, quorum=0))  # no plan


def _tensor_row(data: bytes, dtype="<f4", shape=(2, 3)):
    return ("params", "", "w", dtype, json.dumps(list(shape)), data)


def test_a_tensor_has_exactly_the_bytes_its_shape_and_dtype_say():
    values = np.arange(6, dtype="<f4").reshape(2, 3)
    kind, grp, name, got = store_rows.tensor("state.db", 1, [], _tensor_row(values.tobytes()))
    np.testing.assert_array_equal(got, values)
    for data in (values.tobytes()[:-1], values.tobytes() + b"\0"):  # a byte short, a byte over
        with pytest.raises(StoreCorrupt, match=r"tensors\.data holds '(23|25) bytes'"):
            store_rows.tensor("state.db", 1, [], _tensor_row(data))
