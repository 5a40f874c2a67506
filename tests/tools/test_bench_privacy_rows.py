"""`fedge bench privacy`'s row of a run, from hand-made rounds (the simulation replaced by a fake):
the module docstring's fields read as a plain loop over the rounds, and the grid's δ limit."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from fedge.tools.bench.privacy import SMALLEST, PrivacyGrid, run_one

ROUNDS = [
    {"bytes_up": 1000, "committed": True, "epsilon": 0.4, "global_accuracy": 0.3, "personalized_accuracy_mean": 0.5,
     "personalized_accuracy_min": 0.1},
    {"bytes_up": 700, "committed": False, "epsilon": 0.4, "global_accuracy": 0.3, "personalized_accuracy_mean": 0.5,
     "personalized_accuracy_min": 0.1},  # abandoned (a secure round below its quorum)
    {"bytes_up": 1300, "committed": True, "epsilon": 0.9, "global_accuracy": 0.6, "personalized_accuracy_mean": 0.7,
     "personalized_accuracy_min": 0.2, "smallest_devices": 3, "smallest_devices_max_examples": 21,
     "smallest_devices_global_accuracy": 0.55, "smallest_devices_personalized_accuracy": 0.65},
]


@pytest.fixture
def fake_runs(monkeypatch):
    monkeypatch.setattr("fedge.tools.simulate.fleet.run_simulation",
                        lambda cfg, data=None: SimpleNamespace(rounds=[dict(r) for r in ROUNDS]))


def test_a_runs_row_sums_its_rounds_and_reads_the_last(fake_runs):
    row = run_one(PrivacyGrid(devices=30, clients_per_round=5, rounds=3), None, math.inf)
    assert row["bytes_up"] == sum(r["bytes_up"] for r in ROUNDS) == 3000  # every round's uplink, not the last's
    assert row["rounds_committed"] == sum(1 for r in ROUNDS if r["committed"]) == 2 and row["rounds_run"] == 3
    assert row["epsilon_spent"] == ROUNDS[-1]["epsilon"]  # the ledger at the end
    assert {k: row[k] for k in SMALLEST} == {k: ROUNDS[-1][k] for k in SMALLEST}  # the smallest tenth's numbers
    assert row["accuracy_curve"] == [r["global_accuracy"] for r in ROUNDS] and row["global_accuracy"] == 0.6


def test_delta_must_be_below_one():
    PrivacyGrid(delta=0.999)
    for bad in (1.0, 2.0, 0.0, math.nan):
        with pytest.raises(ValueError, match="--delta"):
            PrivacyGrid(delta=bad)


def test_distributed_runs_draw_fixed_size_cohorts_even_when_central_ones_are_poisson(monkeypatch):
    asked = []
    monkeypatch.setattr("fedge.coordinator.dp.calibrate.noise_multiplier_for",
                        lambda eps, delta, rounds, n, k, sampling: asked.append(sampling) or 1.0)
    monkeypatch.setattr("fedge.tools.simulate.fleet.run_simulation",
                        lambda cfg, data=None: asked.append(cfg.coordinator.privacy.sampling)
                        or SimpleNamespace(rounds=[dict(r) for r in ROUNDS]))
    grid = PrivacyGrid(devices=100, clients_per_round=10, rounds=3, sampling="poisson", distributed_quorum=8)
    assert run_one(grid, None, 4.0, "distributed")["sampling"] == "fixed"
    assert run_one(grid, None, 4.0, "central")["sampling"] == "poisson"
    assert asked == ["fixed", "fixed", "poisson", "poisson"]  # calibrated and run as drawn


@pytest.mark.parametrize("change, said", [({"bits": 0}, "secure_aggregation.bits"),
                                          ({"distributed_clip": math.nan}, "privacy.clip_norm"),
                                          ({"distributed_quorum": 11}, "min_reports")])
def test_a_distributed_setting_no_run_takes_is_refused_before_the_first_run(tmp_path, monkeypatch, change, said):
    """`bench privacy --quick --bits 0` ran every central run first and was refused by the first
    distributed one (81 s); the grid's configs are checked before any data is built."""
    from dataclasses import replace

    from fedge.edge_runtime.kernel.errors import ConfigError
    from fedge.tools.bench import privacy

    def no_run(*_):
        raise AssertionError("a run began")

    monkeypatch.setattr(privacy, "population", no_run)
    monkeypatch.setattr(privacy, "run_one", no_run)
    with pytest.raises(ConfigError, match=said):
        privacy.run(replace(privacy.QUICK, **change), tmp_path / "p.json")
    assert list(tmp_path.iterdir()) == []
