"""A fixed-size DP round abandoned after an update of it was accepted is charged (records.py,
OpenRound.charge): whether it reaches its quorum can hang on one device's data (here a NaN update,
refused, leaves the round one short), and the abandonment shows. Charged once, also when the
coordinator restarted mid-round (the accepted update is replayed); a round abandoned with no update
accepted stays free. Oracle: the ledger's entries, and ε from dp-accounting called directly."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, make_fleet, nan_payload, random_delta
from tests.coordinator.test_dp import _direct
from tests.coordinator.test_dp_rounds import DP, _privacy, _round
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


@pytest.mark.parametrize("restart", [False, True])
def test_a_round_abandoned_after_an_accepted_update_is_charged_once(model, tmp_path, restart):
    path = tmp_path / "s.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=2, min_reports=2, round_deadline_s=5.0,
                       store=RoundStore(path), **DP, privacy=_privacy())
    good, bad = (ManualDevice(fleet, f"m{i}", 10) for i in range(2))
    fleet.drain()
    c = fleet.coordinator
    assert c.begin_round()
    fleet.drain()
    rng = np.random.default_rng(3)
    good.send(encode_message(good.update(random_delta(c.shapes, rng))))
    fleet.drain()
    delta = random_delta(c.shapes, rng)
    bad.send(encode_message(bad.update(delta, payload=nan_payload(delta))))  # refused: the quorum is missed
    fleet.drain()
    assert c.rejections and len(c.round.machine.reported) == 1
    if restart:
        c = fleet.restart(store=RoundStore(path))
        assert len(c.round.machine.reported) == 1  # replayed
    record = _round(fleet)
    assert not record.committed and record.reports == 1
    ledger = c.store.privacy_ledger()
    assert [(e["population"], e["cohort"], e["sampling"]) for e in ledger] == [(2, 2, "fixed")]
    assert c.privacy.spent() == pytest.approx(_direct("fixed", 2, 2, 1.0, 1, 1e-5), rel=1e-9)
    c = fleet.restart(store=RoundStore(path))  # reopened after the close: still one charge
    assert len(c.store.privacy_ledger()) == 1
