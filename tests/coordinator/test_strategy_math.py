"""Strategies against independent references, without a fleet.

* Server optimizers: FedAvgM / FedAdagrad / FedAdam / FedYogi over several rounds against a
  scalar Python loop of Reddi et al. 2021, Algorithm 2 (and Hsu et al. 2019 for momentum).
* SCAFFOLD's server step against numbers worked out by hand; its control upload validated
  like the delta.
* Config: the strategy_from_config contract for every name.

Every strategy end to end over the in-memory broker: test_strategy_fleets.py.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.errors import BadShape, NonFinite, NormBound
from fedge.coordinator.strategies import STRATEGIES, AggregateInput, make_strategy, strategy_from_config
from fedge.coordinator.validation import RoundContext, check_control, payload_digest
from fedge.edge_runtime.kernel.compress import compress_update
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import CompressionSpec, TaskHyper, Update
from fedge.edge_runtime.kernel.update_codec import encode_dense, encode_tensors
from tests.coordinator.fleet import nan_payload
from tests.coordinator.strategy_fleet import NAMES

SHAPES = {"a": (3, 2), "b": (4,)}


def _agg(delta, participants=3, population=10, control=None):
    return AggregateInput(delta, participants, population, control)


def _rounds(seed=0, rounds=6):
    """Mean deltas of mixed magnitudes (so Yogi's sign(v - Δ²) takes both signs)."""
    rng = np.random.default_rng(seed)
    return [{k: (rng.normal(size=s) * 10.0 ** rng.uniform(-4, -1, size=s)).astype(np.float32)
             for k, s in SHAPES.items()} for _ in range(rounds)]


def _init(seed=1):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}


# ------------------------------------------------------------------ server optimizers


def _naive(name, x0, deltas, lr, beta=0.9, beta1=0.9, beta2=0.99, tau=1e-3):
    """The papers' formulas, one Python float at a time."""
    out = {}
    for k, x_arr in x0.items():
        xs = []
        for i in range(x_arr.size):
            x, m, v = float(x_arr.flat[i]), 0.0, tau * tau  # m_{-1} = 0, v_{-1} = τ²
            for delta in deltas:
                d = float(delta[k].flat[i])
                if name == "fedavgm":
                    m = beta * m + d
                    x = x + lr * m
                    continue
                m = beta1 * m + (1 - beta1) * d
                if name == "fedadagrad":
                    v = v + d * d
                elif name == "fedadam":
                    v = beta2 * v + (1 - beta2) * d * d
                else:  # fedyogi
                    s = v - d * d
                    v = v - (1 - beta2) * d * d * (1 if s > 0 else -1 if s < 0 else 0)
                x = x + lr * m / (math.sqrt(v) + tau)
            xs.append(x)
        out[k] = np.array(xs).reshape(x_arr.shape)
    return out


@pytest.mark.parametrize("name", ["fedavgm", "fedadagrad", "fedadam", "fedyogi"])
def test_server_optimizer_matches_the_papers_formulas(name):
    options = {"fedavgm": dict(momentum=0.8)}.get(name, dict(beta1=0.85, beta2=0.95, tau=1e-3))
    strategy = make_strategy(name, TaskHyper(), server_lr=0.05, **options)
    deltas = _rounds()
    state = strategy.init(_init())
    for delta in deltas:
        state = strategy.apply(state, _agg(delta))
    kwargs = {"beta": 0.8} if name == "fedavgm" else {"beta1": 0.85, "beta2": 0.95, "tau": 1e-3}
    want = _naive(name, _init(), deltas, 0.05, **kwargs)
    assert state.version == len(deltas)
    for k in SHAPES:
        assert state.params[k].dtype == np.float32
        np.testing.assert_allclose(state.params[k], want[k], rtol=2e-6, atol=2e-6, err_msg=k)


def test_yogi_and_adam_differ_where_the_paper_says():
    """One step from v = τ² with Δ² > τ²: Adam shrinks v toward Δ², Yogi grows it additively."""
    d = {"a": np.full((3, 2), 0.1, np.float32), "b": np.full(4, 0.1, np.float32)}
    adam = make_strategy("fedadam", TaskHyper(), beta2=0.9, tau=1e-3)
    yogi = make_strategy("fedyogi", TaskHyper(), beta2=0.9, tau=1e-3)
    va = adam.apply(adam.init(_init()), _agg(d)).extra["v"]["b"][0]
    vy = yogi.apply(yogi.init(_init()), _agg(d)).extra["v"]["b"][0]
    assert va == pytest.approx(0.9 * 1e-6 + 0.1 * 0.01, rel=1e-6)
    assert vy == pytest.approx(1e-6 + 0.1 * 0.01, rel=1e-6)


def test_fedavg_and_fedprox_add_the_mean_delta():
    delta = _rounds(rounds=1)[0]
    for name in ("fedavg", "fedprox"):
        strategy = make_strategy(name, TaskHyper(), server_lr=0.5)
        state = strategy.apply(strategy.init(_init()), _agg(delta))
        for k in SHAPES:
            np.testing.assert_allclose(state.params[k], _init()[k] + 0.5 * delta[k].astype(np.float64), rtol=1e-6)
        assert state.extra == {}


# ------------------------------------------------------------------ SCAFFOLD, server side


def test_scaffold_server_step_by_hand():
    """c <- c + (|S|/N) mean(Δc_i);  x <- x + η mean(Δy): |S| = 2, N = 5, η = 1."""
    strategy = make_strategy("scaffold", TaskHyper())
    state = strategy.init({"w": np.array([1.0, -1.0], np.float32)})
    state = dataclasses.replace(state, extra={"control": {"w": np.array([0.5, 0.25], np.float32)}})
    plan = strategy.configure(state)
    assert plan.correction["w"].tolist() == [0.5, 0.25]  # the task carries c itself
    new = strategy.apply(state, _agg({"w": np.array([0.2, 0.4], np.float32)}, participants=2, population=5,
                                     control={"w": np.array([1.0, -2.0], np.float32)}))
    np.testing.assert_allclose(new.extra["control"]["w"], [0.5 + 0.4, 0.25 - 0.8], rtol=1e-6)
    np.testing.assert_allclose(new.params["w"], [1.2, -0.6], rtol=1e-6)
    with pytest.raises(ValueError, match="control"):
        strategy.apply(state, _agg({"w": np.zeros(2, np.float32)}))


def _ctx(control=True, bound=0.0):
    return RoundContext(1, "m", 0, {"d": "t"}, SHAPES, 0.0, control, bound)


def _update(control: bytes = b"", payload: bytes | None = None) -> Update:
    return Update("d", 1, "t", "u", "m", 0, 5, payload or encode_dense(_init()), control=control)


def test_control_upload_is_validated_like_the_delta():
    good = _init(3)
    assert check_control(_update(encode_dense(good)), _ctx())["a"].tolist() == good["a"].tolist()
    with pytest.raises(BadShape, match="needs the control"):
        check_control(_update(), _ctx())
    with pytest.raises(BadShape, match="uses none"):
        check_control(_update(encode_dense(good)), _ctx(control=False))
    assert check_control(_update(), _ctx(control=False)) is None
    with pytest.raises(NonFinite):
        check_control(_update(nan_payload(good)), _ctx())
    with pytest.raises(NonFinite):
        check_control(_update(nan_payload(good, float("inf"))), _ctx())
    with pytest.raises(BadShape):
        check_control(_update(encode_dense({"a": np.zeros((2, 3), np.float32), "b": good["b"]})), _ctx())
    with pytest.raises(BadShape):
        check_control(_update(encode_dense({"a": good["a"]})), _ctx())
    with pytest.raises(BadShape):
        check_control(_update(b"garbage"), _ctx())
    with pytest.raises(NormBound):
        check_control(_update(encode_dense(good)), _ctx(bound=0.1))
    # compressed (sparse, 4-bit) uploads decode to dense arrays
    sent, _, _ = compress_update(good, None, CompressionSpec(quant_bits=4, topk_fraction=0.5), np.random.default_rng(0))
    dense = check_control(_update(encode_tensors(sent)), _ctx())
    assert {k: v.shape for k, v in dense.items()} == SHAPES
    # the duplicate check sees the control too
    assert payload_digest(_update()) != payload_digest(_update(encode_dense(good)))
    assert payload_digest(_update(encode_dense(good))) != payload_digest(_update(encode_dense(_init(4))))


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("name", NAMES)
def test_strategy_from_config_builds_every_name(name):
    cfg = CoordinatorConfig(strategy=name, server_lr=0.2, server_momentum=0.7, server_beta1=0.8, server_beta2=0.95,
                            server_tau=1e-4, prox_mu=0.3)
    strategy = strategy_from_config(cfg)
    assert strategy.name == name and strategy.server_lr == 0.2
    assert strategy.uses_control == (name == "scaffold")
    if name == "fedprox":
        assert strategy.mu == 0.3
    if name == "fedavgm":
        assert strategy.momentum == 0.7
    if name in ("fedadagrad", "fedadam", "fedyogi"):
        assert (strategy.beta1, strategy.beta2, strategy.tau) == (0.8, 0.95, 1e-4)
    default = strategy_from_config(CoordinatorConfig(strategy=name))
    assert default.server_lr == pytest.approx({"fedavgm": 0.1, "fedadagrad": 0.1, "fedadam": 0.03,
                                               "fedyogi": 0.03}.get(name, 1.0))
    assert set(STRATEGIES) == set(NAMES)


@pytest.mark.parametrize("changes", [dict(strategy="fedsgd"), dict(server_lr=-1.0), dict(server_momentum=1.0),
                                     dict(server_beta1=-0.1), dict(server_beta2=1.5), dict(server_tau=0.0),
                                     dict(prox_mu=-0.1), dict(prox_mu=float("nan")), dict(control_norm_bound=-1.0),
                                     dict(strategy="scaffold", hyper=TaskHyper(optimizer="adamw"))])
def test_bad_strategy_config_is_refused(changes):
    with pytest.raises(ConfigError):
        CoordinatorConfig(**changes)


def test_make_strategy_keeps_its_old_callers_and_names_bad_options():
    assert make_strategy("fedavg", TaskHyper()).server_lr == 1.0
    with pytest.raises(ConfigError, match="unknown strategy"):
        make_strategy("nope", TaskHyper())
    with pytest.raises(ConfigError, match="fedavg"):
        make_strategy("fedavg", TaskHyper(), momentum=0.9)
    with pytest.raises(ConfigError):
        make_strategy("fedadam", TaskHyper(), beta2=1.0)
