"""A coordinator restarted with a DP round open and [coordinator.privacy] changed.

The open round keeps the plan it was dispatched with (its z, S, W and sampling event) and is
charged by it when it closes. Where that charge no longer fits the budget as configured now
(another sampling, whose ledger cannot compose with it; a target it would exceed) the start is
refused by name, before anything is replayed or released.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import ManualDevice, make_fleet, pin_noise_keys
from tests.coordinator.test_dp_rounds import DP, _manual_round, _privacy
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _open_round(model, tmp_path, **privacy):
    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, clients_per_round=2, min_reports=1, store=RoundStore(db), **DP,
                       privacy=_privacy(**privacy))
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(4)]
    fleet.drain()
    # Not the OS's key: a Poisson draw at q = 2 / 4 is empty 1 time in 16, and that round commits at
    # once (noise_round.py), leaving no open round to restart. Round 1's pinned key draws all 4.
    pin_noise_keys(fleet.coordinator)
    assert fleet.coordinator.begin_round() and len(fleet.coordinator.round.machine.selected) >= 2
    fleet.drain()
    return fleet, devices, db


def _with(fleet, **privacy):
    cfg = fleet.coordinator.config
    return replace(cfg, privacy=replace(cfg.privacy, **privacy))


def test_a_round_planned_with_one_sampling_is_refused_by_a_restart_with_the_other(model, tmp_path):
    """The ledger was empty, so the start's sampling check passed; the round then committed its
    Poisson charge and the next round's budget check raised ValueError (one ledger, two samplings)
    out of the loop: a traceback after a commit, not a refusal at start."""
    fleet, devices, db = _open_round(model, tmp_path, sampling="poisson")
    with pytest.raises(ConfigError, match="planned with privacy.sampling = 'poisson', not 'fixed'"):
        fleet.restart(store=RoundStore(db), config=_with(fleet, sampling="fixed"))
    c = fleet.restart(store=RoundStore(db))  # as it was: it finishes, charged once by its plan
    assert c.round is not None and c.round.privacy.sampling == "poisson"
    assert _manual_round(fleet, devices, np.random.default_rng(0)).committed
    assert [e["sampling"] for e in c.store.privacy_ledger()] == ["poisson"]


def test_a_round_a_lowered_target_cannot_afford_is_refused_at_start(model, tmp_path):
    """It resumed and was charged when it closed: the ledger's ε ended over the new target."""
    fleet, devices, db = _open_round(model, tmp_path)
    after = fleet.coordinator.round.privacy.epsilon_after
    lower = after / 2
    with pytest.raises(ConfigError, match=rf"when charged, over privacy.target_epsilon = {lower:g}"):
        fleet.restart(store=RoundStore(db), config=_with(fleet, target_epsilon=lower))
    c = fleet.restart(store=RoundStore(db), config=_with(fleet, target_epsilon=after * 1.01))  # it still fits
    assert _manual_round(fleet, devices, np.random.default_rng(0)).committed
    assert c.privacy.spent() == pytest.approx(after)


def test_a_distributed_dp_round_is_abandoned_by_a_restart_with_secure_aggregation_off(model, tmp_path):
    """It resumed as a plain round under its distributed plan: a device that checked in got a plain
    TrainTask and its update would reach the coordinator in the clear, under a charge that says
    "distributed". A secure round never resumes; with secure aggregation off it is abandoned the same."""
    from fedge.coordinator.secagg.config import SecAggConfig
    from tests.coordinator.test_dp_distributed import SETTINGS

    db = tmp_path / "state.db"
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3,
                       store=RoundStore(db), **SETTINGS)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    assert fleet.coordinator.round.privacy.mechanism == "distributed"
    cfg = fleet.coordinator.config
    plain = replace(cfg, secure_aggregation=SecAggConfig(), privacy=replace(cfg.privacy, mechanism="central"))
    c = fleet.restart(store=RoundStore(db), config=plain)
    assert c.round is None
    (record,) = c.store.round_records()
    assert not record["committed"] and record["why"] == "a secure round cannot resume after a restart"
    assert c.store.privacy_ledger() == []  # nothing was released
