"""A robust aggregator's cross-round state survives a restart: the norm bound of round 2 and
the round's aggregate come out bit-identical whether or not the process died mid-round."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from fedge.coordinator.errors import StoreCorrupt
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


def _fleet(model, tmp_path):
    """(fleet, its state file, 3 devices, the shared params' shapes) under norm_bound."""
    path = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=3, store=RoundStore(path), aggregator="norm_bound",
                       robust=ROBUST)
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate((5, 8, 13))]
    fleet.drain()
    return fleet, path, devices, {k: v.shape for k, v in fleet.coordinator.state.params.items()}


def _two_rounds(model, tmp_path, restart_mid_round: bool):
    tmp_path.mkdir()
    fleet, path, devices, shapes = _fleet(model, tmp_path)
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


def _committed(model, tmp_path):
    """A fleet and its state file after one norm_bound round: the robust group holds 3 norms,
    3 claims and the round's aggregate (center)."""
    fleet, path, devices, shapes = _fleet(model, tmp_path)
    rng = np.random.default_rng(5)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    for i, m in enumerate(devices):
        m.send(encode_message(m.update(random_delta(shapes, rng, 0.01), update_id=f"u{i}")))
        fleet.drain()
    assert fleet.coordinator.tick().committed
    return fleet, path, sum(int(np.prod(s)) for s in shapes.values())


def _write(path, name: str, value: np.ndarray | None) -> None:
    """Replace (or, None: delete) robust/<name> of the latest version, with a dtype and shape that
    fit its bytes: only what they say is wrong."""
    with sqlite3.connect(path) as db:
        (version,) = db.execute("SELECT MAX(version) FROM models").fetchone()
        db.execute("DELETE FROM tensors WHERE version = ? AND kind = 'extra' AND grp = 'robust' AND name = ?",
                   (version, name))
        if value is not None:
            db.execute("INSERT INTO tensors (version, kind, grp, name, dtype, shape, data) "
                       "VALUES (?, 'extra', 'robust', ?, ?, ?, ?)",
                       (version, name, value.dtype.str, json.dumps(list(value.shape)), value.tobytes()))


BAD_ROBUST = {  # what robust/<name> is made -> what the error says
    "a NaN norm": ("norms", np.array([0.1, np.nan, 0.2]), "'norms' holds NaN or Inf"),
    "a negative norm": ("norms", np.array([0.1, -5.0, 0.2]), "'norms' holds a negative norm"),
    "float32 norms": ("norms", np.array([0.1, 0.2, 0.3], np.float32), "'norms' is float32 (3,)"),
    "norms in 2-D": ("norms", np.ones((3, 1)), "'norms' is float64 (3, 1)"),
    "no norms": ("norms", None, "'norms' is missing"),
    "a zero claim": ("claims", np.array([5.0, 0.0, 13.0]), "'claims' holds a claim <= 0"),
    "a short center": ("center", np.zeros(3), "'center' is float64 (3,), not float64"),
    "an Inf center": ("center", "inf", "'center' holds NaN or Inf"),
    "a stranger": ("stranger", np.zeros(2), "'stranger' is no part of a robust rule's state"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROBUST))
def test_a_robust_state_fedge_never_wrote_stops_the_start_by_name(model, tmp_path, case):
    """The robust state was read back as it was: a NaN or negative norm moved the norm bound
    (np.median of it), a center of the wrong shape was dropped (_fit) and an Inf one spread,
    all without a word. Now the start stops with StoreCorrupt naming the file and the array."""
    fleet, path, size = _committed(model, tmp_path)
    fleet.restart(store=RoundStore(path))  # the oracle: the state as fedge wrote it is taken
    name, value, said = BAD_ROBUST[case]
    if isinstance(value, str):
        value = np.full(size, np.inf)
    _write(path, name, value)
    with pytest.raises(StoreCorrupt, match="extra robust") as caught:
        fleet.restart(store=RoundStore(path))
    assert str(path) in str(caught.value) and said in str(caught.value)
