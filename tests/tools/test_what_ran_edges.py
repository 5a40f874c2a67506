"""run.json's record of what ran, at its edges (the mutation8-adversary audit): held-out new
devices counted, the most common label's share, synthetic's beta only for synthetic data.
what_ran on a stub setup (a simulation costs seconds); oracles: counts by hand."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from fedge.coordinator.config import CoordinatorConfig
from fedge.tools.datasets import ClientData, FederatedDataset
from fedge.tools.simulate.config import SimConfig
from fedge.tools.simulate.what_ran import most_common_share, what_ran


def client(name: str, train: int, y_test: list[int]) -> ClientData:
    return ClientData(name, np.zeros((train, 3), np.float32), np.zeros(train, np.int64),
                      np.zeros((len(y_test), 3), np.float32), np.array(y_test, np.int64))


def ran(data, cfg, new=()):
    return what_ran(SimpleNamespace(data=data, cfg=cfg, new_clients=tuple(new), backend="numpy",
                                    ccfg=CoordinatorConfig()))


def test_new_devices_are_counted_among_the_devices_and_their_examples():
    """--new-devices K: the data's clients train, K more are held out; run.json's data block
    counts both (5 devices, 4 + 6 + 1 = 11 training and 2 + 1 + 1 = 4 test examples here)."""
    training = (client("d0", 4, [0, 1]), client("d1", 6, [1]))
    data = FederatedDataset("toy", training, 2, (3,), None)
    config = ran(data, SimConfig(devices=3, new_devices=1), new=[client("d2", 1, [1])])
    assert (config["data"]["devices"], config["data"]["train_examples"], config["data"]["test_examples"]) == (3, 11, 4)


def test_the_most_common_test_share_is_the_largest_label_s_share():
    """Always guessing the most common label of the devices' test data: labels 0, 0, 0, 2, 1
    give 3 / 5 (the least common would give 1 / 5)."""
    data = FederatedDataset("toy", (client("d0", 1, [0, 0, 2]), client("d1", 1, [0, 1])), 3, (3,), None)
    assert most_common_share(data) == 3 / 5
    assert ran(data, SimConfig())["data"]["most_common_test_share"] == 3 / 5


def test_beta_is_recorded_for_synthetic_data_only():
    data = FederatedDataset("toy", (client("d0", 1, [0]),), 2, (3,), None)
    shipped = ran(data, SimConfig())
    assert shipped["beta"] is None and shipped["alpha"] == 0.1  # the Dirichlet default
    synthetic = ran(data, SimConfig(dataset="synthetic", beta=0.25))
    assert (synthetic["alpha"], synthetic["beta"], synthetic["partition"]) == (0.5, 0.25, "natural")
