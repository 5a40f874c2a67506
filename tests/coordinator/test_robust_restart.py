"""A robust aggregator's cross-round state survives a restart: the norm bound of round 2 and
the round's aggregate come out bit-identical whether or not the process died mid-round."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.robust.aggregators import RobustConfig, RobustState
from fedge.coordinator.robust.norm_bound import NormBoundConfig
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model

ROBUST = RobustConfig(norm=NormBoundConfig(multiplier=1.5, min_history=3))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _two_rounds(model, tmp_path, restart_mid_round: bool):
    tmp_path.mkdir()
    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=3, store=RoundStore(path), aggregator="norm_bound",
                       robust=ROBUST)
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate((5, 8, 13))]
    fleet.drain()
    shapes = {k: v.shape for k, v in fleet.coordinator.state.params.items()}
    rng = np.random.default_rng(3)
    c = fleet.coordinator
    for round_no in (1, 2):
        assert c.begin_round()
        fleet.drain()
        scales = (0.01, 0.02, 0.01) if round_no == 1 else (0.01, 0.5, 0.01)  # round 2: one far too long
        updates = [m.update(random_delta(shapes, rng, s), update_id=f"r{round_no}-{i}")
                   for i, (m, s) in enumerate(zip(devices, scales))]
        for i, (m, u) in enumerate(zip(devices, updates)):
            m.send(encode_message(u))
            fleet.drain()
            if restart_mid_round and round_no == 2 and i == 1:
                c = fleet.restart(store=RoundStore(path))
                fleet.drain()
        record = c.tick()
        assert record.committed and record.reports == 3
    return c


def test_norm_bound_state_survives_a_restart_bit_for_bit(model, tmp_path):
    ref = _two_rounds(model, tmp_path / "ref", restart_mid_round=False)
    got = _two_rounds(model, tmp_path / "crash", restart_mid_round=True)
    ref_norms, got_norms = (RobustState.from_extra(c.state.extra["robust"]).history.norms for c in (ref, got))
    assert len(ref_norms) == 6 and got_norms == ref_norms
    for name, value in ref.state.params.items():
        assert got.state.params[name].tobytes() == value.tobytes(), name
    # The bound clipped round 2's long update (3 earlier norms: 1.5 x their median).
    bound = 1.5 * np.median(ref_norms[:3])
    assert ref_norms[4] > bound
