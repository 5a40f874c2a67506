"""keep_rounds beside the update keys: a re-publish of a round whose row is pruned is refused,
as stale (its key is gone too) or as a duplicate (its key is kept), and never counted into the
round open meanwhile. Oracle: the Acks the device gets and the open round's own state."""

from __future__ import annotations

import numpy as np
import pytest

from tests.coordinator.fleet import ManualDevice, make_fleet
from tests.coordinator.test_keep_rounds import _round
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_late_update_of_a_pruned_round_is_never_counted_into_the_open_round(model, tmp_path):
    """keep_rounds = 1 under the memory store's 8 rounds of update keys: a re-publish of round 1
    (row and key gone) is refused as stale, of round 5 (row gone, key kept) acked as a duplicate,
    and neither enters the round open meanwhile (it still waits for both devices' own updates)."""
    fleet = make_fleet(model, tmp_path, clients_per_round=2, min_reports=2, keep_rounds=1)
    devices = [ManualDevice(fleet, d, n) for d, n in (("d0", 5), ("d1", 9))]
    fleet.drain()
    rng, sent = np.random.default_rng(2), {}
    ran = [_round(fleet, devices, rng, sent) for _ in range(10)]
    c = fleet.coordinator
    assert [r["round_id"] for r in c.store.round_records()] == ran[-1:]
    open_id = _round(fleet, [], rng, sent, commit=False)
    before = len(devices[0].acks())
    for old in (ran[0], ran[4]):
        devices[0].send(sent["d0", old])
        fleet.drain()
    assert devices[0].acks()[before:] == [(False, "stale_round"), (True, "duplicate")]
    assert c.round.ctx.round_id == open_id and not c.round.seen and c.round.machine.expects("d0")
