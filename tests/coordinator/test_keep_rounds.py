"""keep_rounds: the coordinator's state keeps the latest N closed rounds' rows and evaluations.

Oracle: a direct SQL count of the state file (or the memory store's records) against the
round ids a plain loop ran. A restart on a pruned file must resume (the next round id, the
open round) and still ack a late re-publish of a round whose row is gone as a duplicate: the
update keys are keep_key_rounds', not keep_rounds'.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.store import RoundStore, open_store
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model

KEEP = 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _fleet(model, tmp_path, store=None):
    fleet = make_fleet(model, tmp_path, clients_per_round=2, min_reports=2, store=store, keep_rounds=KEEP)
    devices = [ManualDevice(fleet, d, n) for d, n in (("d0", 5), ("d1", 9))]
    fleet.drain()
    return fleet, devices


def _round(fleet, devices, rng, sent: dict, commit: bool = True) -> int:
    """One round in which `devices` report (update id u<round>); returns its id. sent: (device,
    round) -> the Update's bytes, to re-publish later."""
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    round_id = c.round.ctx.round_id
    shapes = {k: v.shape for k, v in c.state.params.items()}
    for device in devices:
        sent[device.id, round_id] = encode_message(device.update(random_delta(shapes, rng), update_id=f"u{round_id}"))
        device.send(sent[device.id, round_id])
        fleet.drain()
    if commit:
        assert c.tick().committed
    return round_id


def _ids(path, sql: str, *params) -> list[int]:
    db = sqlite3.connect(path)
    try:
        return [r for (r,) in db.execute(sql, params)]
    finally:
        db.close()


def test_a_restart_on_a_pruned_state_file_resumes_and_still_refuses_replays(model, tmp_path):
    path = tmp_path / "state.db"
    fleet, devices = _fleet(model, tmp_path, RoundStore(path, keep_rounds=KEEP))
    rng, sent = np.random.default_rng(0), {}
    ran = [_round(fleet, devices, rng, sent) for _ in range(KEEP + 5)]
    open_id = _round(fleet, devices[:1], rng, sent, commit=False)  # d0 reported, d1 not yet: the round stays open
    fleet.coordinator.store.close()

    assert _ids(path, "SELECT round_id FROM rounds WHERE status <> 'open' ORDER BY round_id") == ran[-KEEP:]
    assert _ids(path, "SELECT round_id FROM rounds WHERE status = 'open'") == [open_id] == [ran[-1] + 1]
    assert _ids(path, "SELECT count(*) FROM updates WHERE round_id = ?", ran[0]) == [2]  # keep_key_rounds = 100

    fleet.restart(store=RoundStore(path, keep_rounds=KEEP))
    c = fleet.coordinator
    assert c.round is not None and c.round.ctx.round_id == open_id and c.state.version == len(ran)
    # d0 re-publishes its update of the first round, whose row is gone (its Ack was lost): the
    # dedupe reads the update keys, which are still there, so it is acked as a duplicate.
    before = len(devices[0].acks())
    devices[0].send(sent["d0", ran[0]])
    fleet.drain()
    assert devices[0].acks()[before:] == [(True, "duplicate")]
    shapes = {k: v.shape for k, v in c.state.params.items()}
    devices[1].send(encode_message(devices[1].update(random_delta(shapes, rng), update_id=f"u{open_id}")))
    fleet.drain()
    assert c.tick().committed and c.state.version == len(ran) + 1 and c.next_round_id == open_id + 1
    c.store.close()
    assert _ids(path, "SELECT round_id FROM rounds ORDER BY round_id") == [*ran, open_id][-KEEP:]


def test_a_coordinator_without_a_state_file_keeps_keep_rounds_records_in_memory(model, tmp_path):
    fleet, devices = _fleet(model, tmp_path)
    rng, sent = np.random.default_rng(1), {}
    ran = [_round(fleet, devices, rng, sent) for _ in range(KEEP + 2)]
    assert [r["round_id"] for r in fleet.coordinator.store.round_records()] == ran[-KEEP:]


@pytest.mark.parametrize("value", [-1, -(2**63)])
def test_a_negative_keep_rounds_is_refused_by_name_with_the_minimum(value):
    with pytest.raises(ConfigError, match=r"keep_rounds must be 0 .* or >= 1 .* at least 1 is kept"):
        CoordinatorConfig(keep_rounds=value)


def test_open_store_passes_keep_rounds(tmp_path):
    store = open_store(CoordinatorConfig(state_db=str(tmp_path / "s.db"), keep_rounds=7))
    try:
        assert store.keep_rounds == 7
    finally:
        store.close()
    with pytest.raises(ValueError, match="keep_rounds"):
        RoundStore(tmp_path / "t.db", keep_rounds=-1)
