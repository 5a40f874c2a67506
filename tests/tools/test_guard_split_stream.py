"""The guard split draws from its own stream of the seed, not the proxy split's (found by the
mutation7-simfleet audit): drawn from the proxy's stream at the same fraction it was the proxy
split itself, and removing the proxy left the coordinator an empty guard set."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.tools.datasets import load_shipped
from fedge.tools.pretrain import proxy_positions
from fedge.tools.simulate.config import sim_config
from fedge.tools.simulate.guard_split import guard_positions


@pytest.mark.parametrize("seed", [0, 3])
def test_a_guard_split_as_large_as_the_proxy_split_keeps_most_of_its_examples(seed):
    y = load_shipped("digits")[1]
    cfg = sim_config(dataset="digits", seed=seed, guard_fraction=0.1, proxy_fraction=0.1)
    guard, proxy = guard_positions(cfg, y), proxy_positions(y, 0.1, seed)
    assert not np.intersect1d(guard, proxy).size
    # two independent 10% draws share about 10% of either: the guard keeps about 90% of its 180
    assert len(guard) >= 0.75 * round(0.1 * len(y))
