"""Server optimizers fed by the round's real aggregator, over several rounds of random deltas
from devices with unequal example counts, against a plain numpy loop of Reddi et al. 2021,
Algorithm 2 (m_{-1} = 0, v_{-1} = τ², no bias correction) with the example-weighted mean the
coordinator documents (weights.py: min(claim, cap)); SCAFFOLD's server step (Karimireddy et al.
2020, option II: x += η mean Δy, c += |S|/N mean Δc, both unweighted) over several rounds.
tests/coordinator/test_strategy_math.py checks one float at a time on given means; this one
adds the aggregation, the example cap and the float32 state between rounds."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.aggregate import UpdateMeta, make_aggregator
from fedge.coordinator.strategies import AggregateInput, make_strategy
from fedge.coordinator.weights import update_weight
from fedge.edge_runtime.kernel.protocol import TaskHyper

SHAPES = {"w": (4, 3), "b": (3,)}
CAP = 500


def _round(rng):
    count = int(rng.integers(2, 7))
    deltas = [{k: (rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 0)).astype(np.float32) for k, s in SHAPES.items()}
              for _ in range(count)]
    examples = [int(x) for x in rng.choice([1, 7, 60, 499, 500, 10_000], size=count)]  # 10,000 is capped
    return deltas, examples


def _plain(name, x, rounds, lr, beta1=0.9, beta2=0.99, tau=1e-3, momentum=0.9):
    x = {k: v.astype(np.float64) for k, v in x.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.full_like(a, tau * tau) for k, a in x.items()}
    for deltas, examples in rounds:
        w = np.minimum(np.array(examples, np.float64), CAP)
        for k in x:
            d = sum(wi * di[k].astype(np.float64) for wi, di in zip(w, deltas)) / w.sum()
            if name == "fedavgm":
                m[k] = momentum * m[k] + d
                x[k] = x[k] + lr * m[k]
                continue
            m[k] = beta1 * m[k] + (1 - beta1) * d
            if name == "fedadagrad":
                v[k] = v[k] + d * d
            elif name == "fedadam":
                v[k] = beta2 * v[k] + (1 - beta2) * d * d
            else:  # fedyogi
                v[k] = v[k] - (1 - beta2) * d * d * np.sign(v[k] - d * d)
            x[k] = x[k] + lr * m[k] / (np.sqrt(v[k]) + tau)
    return x


@pytest.mark.parametrize("name", ["fedavgm", "fedadagrad", "fedadam", "fedyogi"])
@pytest.mark.parametrize("seed", [0, 1])
def test_optimizer_over_aggregated_rounds_is_algorithm_2(name, seed):
    rng = np.random.default_rng([seed, 11])
    x0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    rounds = [_round(rng) for _ in range(8)]
    strategy = make_strategy(name, TaskHyper(), server_lr=0.05)
    state = strategy.init(x0)
    for deltas, examples in rounds:
        agg = make_aggregator("mean")
        for i, (d, n) in enumerate(zip(deltas, examples)):
            agg.add(d, UpdateMeta(f"d{i}", update_weight(n, CAP)))
        state = strategy.apply(state, AggregateInput(agg.result(), len(deltas), 20))
    want = _plain(name, x0, rounds, 0.05)
    assert state.version == len(rounds)
    for k in SHAPES:
        # float32 state between rounds (documented): the plain loop keeps float64 throughout
        np.testing.assert_allclose(state.params[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_scaffold_server_over_rounds_is_option_two():
    rng = np.random.default_rng(5)
    x0 = {k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()}
    strategy = make_strategy("scaffold", TaskHyper(), server_lr=0.7)
    state = strategy.init(x0)
    x = {k: v.astype(np.float64) for k, v in x0.items()}
    c = {k: np.zeros(s) for k, s in SHAPES.items()}
    population = 9
    for _ in range(6):
        for k in SHAPES:  # every task carries the server's c
            np.testing.assert_allclose(strategy.configure(state).correction[k], c[k], rtol=1e-5, atol=1e-6)
        count = int(rng.integers(1, population + 1))
        dy = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(count)]
        dc = [{k: rng.standard_normal(s).astype(np.float32) for k, s in SHAPES.items()} for _ in range(count)]
        mean_dy, mean_dc = make_aggregator("mean"), make_aggregator("mean")
        for i in range(count):  # SCAFFOLD weighs every update 1 (weights.py)
            mean_dy.add(dy[i], UpdateMeta(f"d{i}", 1.0))
            mean_dc.add(dc[i], UpdateMeta(f"d{i}", 1.0))
        state = strategy.apply(state, AggregateInput(mean_dy.result(), count, population, mean_dc.result()))
        for k in SHAPES:
            x[k] = x[k] + 0.7 * sum(d[k].astype(np.float64) for d in dy) / count
            c[k] = c[k] + sum(d[k].astype(np.float64) for d in dc) / population  # (|S|/N) mean = (1/N) sum
            np.testing.assert_allclose(state.params[k], x[k], rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state.extra["control"][k], c[k], rtol=1e-5, atol=1e-6)
