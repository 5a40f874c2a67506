"""The strategies at their documented edges, against the papers' formulas worked by hand
(2026-12-06 mutation audit of the update path: benchmarks/results/2026-12-06-mutation4-update/):
Yogi's sign(0), SCAFFOLD's control step without the server learning rate, and the option
ranges' ends."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedge.coordinator.strategies import AggregateInput, make_strategy
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import TaskHyper


def test_yogi_leaves_v_alone_where_v_equals_the_squared_delta():
    """v_t = v - (1 - β2) Δ² sign(v - Δ²), and sign(0) = 0: with τ = 0.5 (v_{-1} = τ² = 0.25)
    and Δ = 0.5 (Δ² = 0.25, all exact in binary) v stays 0.25, and the step is
    η m / (sqrt(v) + τ) = 0.1 x (0.1 x 0.5) / 1 = 0.005."""
    yogi = make_strategy("fedyogi", TaskHyper(), server_lr=0.1, beta1=0.9, beta2=0.9, tau=0.5)
    state = yogi.init({"w": np.zeros(2, np.float32)})
    new = yogi.apply(state, AggregateInput({"w": np.array([0.5, -0.5], np.float32)}, 1, 1))
    assert new.extra["v"]["w"].tolist() == [0.25, 0.25]
    np.testing.assert_allclose(new.params["w"], [0.005, -0.005], rtol=1e-6)
    # one ulp off equality, the sign term is there again (v moves by (1 - β2) Δ²)
    off = yogi.apply(state, AggregateInput({"w": np.array([0.6, 0.4], np.float32)}, 1, 1))
    np.testing.assert_allclose(off.extra["v"]["w"], [0.25 + 0.1 * 0.36, 0.25 - 0.1 * 0.16], rtol=1e-6)


def test_scaffold_moves_c_by_s_over_n_of_the_mean_whatever_the_server_learning_rate():
    """Karimireddy et al. 2020, Alg. 1: x <- x + η_g Δx, but c <- c + (|S|/N) Δc, no η_g."""
    scaffold = make_strategy("scaffold", TaskHyper(), server_lr=0.5)
    state = scaffold.init({"w": np.array([1.0, -1.0], np.float32)})
    state = dataclasses.replace(state, extra={"control": {"w": np.array([0.5, 0.25], np.float32)}})
    new = scaffold.apply(state, AggregateInput({"w": np.array([0.2, 0.4], np.float32)}, 2, 8,
                                               {"w": np.array([1.0, -2.0], np.float32)}))
    np.testing.assert_allclose(new.extra["control"]["w"], [0.5 + 0.25, 0.25 - 0.5], rtol=1e-6)
    np.testing.assert_allclose(new.params["w"], [1.1, -0.8], rtol=1e-6)


def test_scaffold_caps_s_over_n_at_one_when_the_population_is_short():
    """N < |S| cannot happen in the coordinator (a reporter is in the registry), but the
    guard says the ratio is held at 1: c moves by the mean itself, and N = 0 is no crash."""
    scaffold = make_strategy("scaffold", TaskHyper())
    state = scaffold.init({"w": np.zeros(2, np.float32)})
    for population in (0, 1):
        new = scaffold.apply(state, AggregateInput({"w": np.zeros(2, np.float32)}, 2, population,
                                                   {"w": np.array([1.0, -2.0], np.float32)}))
        assert new.extra["control"]["w"].tolist() == [1.0, -2.0]


def test_beta_zero_is_in_range_and_fedavgm_without_momentum_is_fedavg():
    """betas lie in [0, 1): 0 is accepted; FedAvgM with β = 0 (default η = 1 - β = 1) takes
    FedAvg's step, and FedAdam with β1 = β2 = 0 steps Δ / (|Δ| + τ)."""
    x0 = {"w": np.array([1.0, 2.0], np.float32)}
    delta = AggregateInput({"w": np.array([0.5, -0.25], np.float32)}, 1, 1)
    avgm = make_strategy("fedavgm", TaskHyper(), momentum=0.0)
    fedavg = make_strategy("fedavg", TaskHyper())
    assert avgm.apply(avgm.init(x0), delta).params["w"].tolist() == fedavg.apply(fedavg.init(x0), delta).params[
        "w"].tolist() == [1.5, 1.75]
    adam = make_strategy("fedadam", TaskHyper(), server_lr=0.1, beta1=0.0, beta2=0.0, tau=1e-3)
    got = adam.apply(adam.init(x0), delta).params["w"]
    np.testing.assert_allclose(got, [1.0 + 0.1 * 0.5 / (0.5 + 1e-3), 2.0 - 0.1 * 0.25 / (0.25 + 1e-3)], rtol=1e-6)


@pytest.mark.parametrize("name, options", [
    ("fedadam", dict(tau=0.0)), ("fedyogi", dict(tau=-1e-3)), ("fedavg", dict(server_lr=0.0)),
    ("fedavgm", dict(momentum=1.0)), ("fedadagrad", dict(beta1=1.0)), ("fedprox", dict(mu=-1e-9)),
])
def test_the_ends_of_the_option_ranges_are_refused_by_name(name, options):
    with pytest.raises(ConfigError, match=name):
        make_strategy(name, TaskHyper(), **options)


def test_fedprox_mu_zero_is_plain_fedavg_local_training():
    """mu >= 0; 0 is documented (TaskHyper.mu) as plain FedAvg local training."""
    assert make_strategy("fedprox", TaskHyper(), mu=0.0).configure(None).hyper.mu == 0.0
