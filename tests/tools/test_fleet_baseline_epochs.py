"""How many epochs `fedge simulate --baselines local,central` gives each baseline (README, the
--local-epochs / --central-epochs row): rounds x epochs for each device alone, the fleet's total
compute (rounds x epochs x clients per round / devices) for the pooled run, unless the flag names
a number (found by the mutation7-simfleet audit: no test ran the defaults with clients per round
under the fleet)."""

from __future__ import annotations

import pytest

from fedge.tools.simulate import fleet
from fedge.tools.simulate.config import sim_config


@pytest.mark.parametrize("flags, local, central", [({}, 4 * 2, max(1, 4 * 2 * 2 // 8)),
                                                   ({"local_epochs": 3, "central_epochs": 5}, 3, 5)])
def test_each_baseline_gets_its_documented_epochs(monkeypatch, flags, local, central):
    asked = {}
    monkeypatch.setattr(fleet.baseline_runs, "local_only", lambda model, data, hyper, epochs, *a: asked.setdefault(
        "local", (epochs, hyper.epochs)))
    monkeypatch.setattr(fleet.baseline_runs, "central", lambda model, data, hyper, epochs, *a: asked.setdefault(
        "central", (epochs, hyper.epochs)))
    cfg = sim_config(dataset="synthetic", devices=8, rounds=4, clients_per_round=2, min_reports=2, epochs=2,
                     baselines=("local", "central"), **flags)
    result = fleet.run_simulation(cfg)
    assert len(result.rounds) == 4
    assert asked == {"local": (local, 2), "central": (central, 2)}
