"""Issue 9's two bad devices against the default config, end to end in the simulator (real
device code, real ONNX Runtime, the coordinator's default aggregator):

* a poisoner: every value of its delta 5.0, claiming the largest example count the codec
  accepts (2**32 - 1; a claim of 10**12 is refused at decode time as malformed);
* an honest device whose training blows up (its features 10**4 times too large).

Oracle: the same seed with that device honest (for the diverging device, averaged over
seeds). The plain mean is run too, to show the attack is real (it takes the model to
chance). Accuracy is the mean of the last five rounds' global accuracy: single rounds swing by
several points on this small fleet.

Each test's runs are independent and single-threaded: they run two at a time in worker processes
(side_by_side.py), the same calls with the same configs, so the figures are those of a run in
the test's own process.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.robust.norm_bound import NormBoundConfig
from fedge.tools.simulate.config import sim_config
from fedge.tools.simulate.fleet import load_data, run_simulation
from tests.tools.side_by_side import SideBySide

pytestmark = pytest.mark.slow

BASE = dict(dataset="digits", devices=10, rounds=40, clients_per_round=5)
WINDOW = 5


@pytest.fixture(scope="module")
def workers():
    """The module's runs, two at a time in worker processes (side_by_side.py)."""
    run = SideBySide()
    yield run
    run.close()


def _accuracy(result) -> float:
    assert all(r["committed"] for r in result.rounds), [r["committed"] for r in result.rounds]
    return float(np.mean([r["global_accuracy"] for r in result.rounds[-WINDOW:]]))


def test_the_default_aggregator_is_the_norm_bound():
    assert CoordinatorConfig().aggregator == "norm_bound"


SEEDS = range(8)


def _wild_fleet(cfg):
    """The same fleet with device 3's features 10**4 times too large: its training blows up."""
    data = load_data(cfg)
    wild = dataclasses.replace(data.clients[3], x_train=data.clients[3].x_train * 1e4)
    return dataclasses.replace(data, clients=(*data.clients[:3], wild, *data.clients[4:]))


def _simulate(options: dict, out_dir: str, wild: bool = False):
    """One run, in a worker process (side_by_side.py): sim_config(**options); wild: _wild_fleet."""
    cfg = sim_config(**options, out_dir=out_dir)
    if not wild:
        return run_simulation(cfg)
    logging.getLogger().setLevel(logging.ERROR)  # quiet: each diverged task logs a warning
    return run_simulation(cfg, data=_wild_fleet(cfg))


def test_a_diverging_honest_device_is_declined_and_costs_under_a_point(tmp_path, workers):
    """Averaged over eight seeds: one device's change moves a 10-device fleet's accuracy by
    up to 4 points either way from seed to seed (README, Robust aggregation), so a single seed
    cannot hold a 1-point bar. Measured at exclude_multiplier 4: costs +1.6, +3.9, -1.6, -1.8,
    -1.5, -0.8, +1.2, +0.2 points, mean +0.13; with the device clip (the default) +0.3, +4.4,
    -1.6, -2.0, +0.8, -0.1, -0.3, +0.8, mean +0.29; with the private head refit as far as the
    rounds a device sat out call for (2026-12-07, edge_runtime/head_refit.py) 0.0, +4.4, -1.3,
    -1.7, +0.4, +0.5, -0.9, -0.1, mean +0.16. Fewer rounds do not hold the bar: the same
    runs read at rounds 21-25, 26-30 and 31-35 (a shorter run is the longer one's first rounds:
    checked on seed 1 at 25) give means of -1.10, +1.45 and -0.99 points."""
    runs = workers(_simulate, [({**BASE, "seed": seed}, str(tmp_path / f"{kind}-{seed}"), kind == "wild")
                                    for seed in SEEDS for kind in ("honest", "wild")])
    costs = []
    for honest, wild in zip(runs[::2], runs[1::2]):
        assert wild.summary["declines"].get("diverged", 0) >= 1  # its tasks end as a named failure...
        costs.append(_accuracy(honest) - _accuracy(wild))
    assert abs(np.mean(costs)) <= 0.01, costs  # ...never as a huge delta


POISON = dict(dataset="mnist5k", devices=20, rounds=20, clients_per_round=10)


def test_one_poisoner_costs_what_losing_its_data_costs(tmp_path, workers):
    """MNIST-5k, 20 devices, Dirichlet 0.1: within 1 point of the same seed with that device
    honest (issue 9). The default leaves the poisoner's update out of the mean (its norm is far
    over 4x the median); clipping it in, as the default did before, cost 14 points here."""
    poison = {**POISON, "attack": "poison", "attackers": 0.05}
    honest, attacked, plain = workers(_simulate, [
        (POISON, str(tmp_path / "honest")), (poison, str(tmp_path / "nb")),
        ({**poison, "rounds": 4, "aggregator": "mean"}, str(tmp_path / "mean"))])
    assert plain.rounds[-1]["global_accuracy"] < 0.2  # the attack is real: the plain mean goes to chance
    assert attacked.summary["attackers"] and all(r["committed"] for r in attacked.rounds)
    assert abs(_accuracy(attacked) - _accuracy(honest)) <= 0.01, (_accuracy(attacked), _accuracy(honest))


def test_data_rich_honest_devices_are_clipped_at_the_source_not_left_out_under_quantity_skew(tmp_path, workers):
    """MNIST-5k, 20 devices with lognormal sizes, no attack: an update's norm grows with the
    examples it trained on (the largest devices hold 3-5x the median). Without the device clip
    the exclusion bound leaves some of their honest updates out (23 of 200 on this seed); with
    it, the default, the devices clip to the round's bound before they send, and 2 are (quantized
    or cold-start rounds aside, what is sent is within 2x the median). The opt-in claim allowance
    keeps them all too; it is not the default: it let boosted backdoor updates in."""
    skew = dict(dataset="mnist5k", devices=20, rounds=20, clients_per_round=10, partition="quantity", seed=1)
    default, unclipped, allowed = workers(_simulate, [
        (skew, str(tmp_path / "default")),
        ({**skew, "norm": NormBoundConfig(device_clip=False)}, str(tmp_path / "unclipped")),
        ({**skew, "norm": NormBoundConfig(device_clip=False, exclude_claim_allowance=2.5)}, str(tmp_path / "allowed"))])
    assert unclipped.summary["excluded"]["honest"] >= 10 and unclipped.summary["excluded"]["attackers"] == 0
    assert default.summary["excluded"]["honest"] <= 3
    assert allowed.summary["excluded"]["honest"] == 0
