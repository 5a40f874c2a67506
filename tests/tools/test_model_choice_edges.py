"""Which model a simulation runs, and whether it has something to score (the mutation8-adversary
audit): a --data folder that happens to be called mnist5k, held-out devices without tests."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import ClientData, FederatedDataset
from fedge.tools.simulate.config import SimConfig
from fedge.tools.simulate.model_choice import check_scorable, choose_spec


def client(name: str, features: int, tests: int) -> ClientData:
    return ClientData(name, np.zeros((4, features), np.float32), np.zeros(4, np.int64),
                      np.zeros((tests, features), np.float32), np.zeros(tests, np.int64))


def test_a_data_folder_called_mnist5k_gets_a_model_for_its_own_features():
    """The name of a --data folder is its user's: 13 features and 3 labels get a 13-input,
    3-class MLP; only the shipped mnist5k gets the MNIST model (784 inputs)."""
    folder = FederatedDataset("mnist5k", (client("d0", 13, 1),), 3, (13,), None)
    spec = choose_spec(SimConfig(data_dir="some/folder"), folder)
    assert (math.prod(spec.input_shape), spec.num_classes) == (13, 3)
    shipped = FederatedDataset("mnist5k", (client("d0", 784, 1),), 10, (784,), (1, 28, 28))
    assert math.prod(choose_spec(SimConfig(), shipped).input_shape) == 784


def test_held_out_devices_with_no_test_example_are_refused_by_name():
    training = (client("d0", 3, 2),)
    check_scorable(training, (client("n0", 3, 1), client("n1", 3, 0)))  # one held-out test is enough
    with pytest.raises(DatasetError, match=r"no --new-devices device holds test examples \(n0, n1\)"):
        check_scorable(training, (client("n0", 3, 0), client("n1", 3, 0)))
    with pytest.raises(DatasetError, match=r"no training device holds test examples \(d0\)"):
        check_scorable((client("d0", 3, 0),), ())
