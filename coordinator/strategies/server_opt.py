"""Server optimizers on the aggregated delta (Reddi et al. 2021, "Adaptive Federated Optimization").

The round's example-weighted mean delta Δ_t = mean(y_i - x_t) is a pseudo-gradient that
points downhill; the server feeds it to an optimizer instead of adding it as it is.

    FedAvgM    m_t = β m_{t-1} + Δ_t                        x_{t+1} = x_t + η m_t
    FedAdagrad m_t = β1 m_{t-1} + (1 - β1) Δ_t;  v_t = v_{t-1} + Δ_t²
    FedAdam    m_t as above;                      v_t = β2 v_{t-1} + (1 - β2) Δ_t²
    FedYogi    m_t as above;                      v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)
               (all three)                        x_{t+1} = x_t + η m_t / (sqrt(v_t) + τ)

as in the paper's Algorithm 2: m_{-1} = 0, v_{-1} = τ² (the paper asks v_{-1} >= τ²), no
bias correction. FedAvgM is the heavy-ball form of Hsu et al. 2019 (dampening 0), so its
steady-state step is η / (1 - β) times the mean delta.

Default server learning rates (when none is given): FedAvgM η = 1 - β, so that steady-state
step equals FedAvg's (η = 1 with β = 0.9 overshoots even a toy task); FedAdam and FedYogi
0.03 and FedAdagrad 0.1, around the best values Reddi et al. report with τ = 1e-3 (Adagrad's
growing v wants a larger η). They are starting points: tune η per task.

The moments live in ServerState.extra ("momentum"; "m" and "v") as float32, one array per
shared param; each step is computed in float64 from them, so a restart that reloads them
from the store continues bit-for-bit.
"""

from __future__ import annotations

import numpy as np

from fedge.edge_runtime.kernel.protocol import TaskHyper

from .base import AggregateInput, Params, ServerState, Strategy, zeros_like

ADAPTIVE_RULES = ("adagrad", "adam", "yogi")


def momentum_step(x: np.ndarray, m: np.ndarray, delta: np.ndarray, lr: float,
                  beta: float) -> tuple[np.ndarray, np.ndarray]:
    """One FedAvgM step on one array: (new x, new momentum), float64."""
    m = beta * np.asarray(m, np.float64) + np.asarray(delta, np.float64)
    return np.asarray(x, np.float64) + lr * m, m


def adaptive_step(rule: str, x: np.ndarray, m: np.ndarray, v: np.ndarray, delta: np.ndarray, lr: float,
                  beta1: float, beta2: float, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One FedAdagrad / FedAdam / FedYogi step on one array: (new x, m, v), float64."""
    d = np.asarray(delta, np.float64)
    v = np.asarray(v, np.float64)
    m = beta1 * np.asarray(m, np.float64) + (1 - beta1) * d
    d2 = d * d
    if rule == "adagrad":
        v = v + d2
    elif rule == "adam":
        v = beta2 * v + (1 - beta2) * d2
    elif rule == "yogi":
        v = v - (1 - beta2) * d2 * np.sign(v - d2)
    else:
        raise ValueError(f"unknown adaptive rule {rule!r}; expected one of {ADAPTIVE_RULES}")
    return np.asarray(x, np.float64) + lr * m / (np.sqrt(v) + tau), m, v


def _check_beta(name: str, value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


class FedAvgM(Strategy):
    name = "fedavgm"

    def __init__(self, hyper: TaskHyper, server_lr: float | None = None, momentum: float = 0.9):
        momentum = _check_beta("server momentum", momentum)
        super().__init__(hyper, (1.0 - momentum) if server_lr is None else server_lr)
        self.momentum = momentum

    def init_extra(self, params: Params) -> dict[str, Params]:
        return {"momentum": zeros_like(params)}

    def apply(self, state: ServerState, agg: AggregateInput) -> ServerState:
        params, moment = {}, {}
        for k, x in state.params.items():
            new_x, new_m = momentum_step(x, state.extra["momentum"][k], agg.mean_delta[k], self.server_lr,
                                         self.momentum)
            params[k], moment[k] = new_x.astype(np.float32), new_m.astype(np.float32)
        return ServerState(state.version + 1, params, {**state.extra, "momentum": moment})


class AdaptiveServerOpt(Strategy):
    """FedAdagrad, FedAdam and FedYogi differ only in the v update (`rule`)."""

    rule = "adam"
    default_server_lr = 0.03

    def __init__(self, hyper: TaskHyper, server_lr: float | None = None, beta1: float = 0.9, beta2: float = 0.99,
                 tau: float = 1e-3):
        super().__init__(hyper, server_lr)
        self.beta1 = _check_beta("server beta1", beta1)
        self.beta2 = _check_beta("server beta2", beta2)
        if not tau > 0:
            raise ValueError(f"server tau must be > 0, got {tau}")
        self.tau = float(tau)

    def init_extra(self, params: Params) -> dict[str, Params]:
        v0 = {k: np.full(np.shape(v), self.tau**2, np.float32) for k, v in params.items()}  # v_{-1} = τ²
        return {"m": zeros_like(params), "v": v0}

    def apply(self, state: ServerState, agg: AggregateInput) -> ServerState:
        params, ms, vs = {}, {}, {}
        for k, x in state.params.items():
            new_x, m, v = adaptive_step(self.rule, x, state.extra["m"][k], state.extra["v"][k], agg.mean_delta[k],
                                        self.server_lr, self.beta1, self.beta2, self.tau)
            params[k], ms[k], vs[k] = new_x.astype(np.float32), m.astype(np.float32), v.astype(np.float32)
        return ServerState(state.version + 1, params, {**state.extra, "m": ms, "v": vs})


class FedAdagrad(AdaptiveServerOpt):
    name, rule, default_server_lr = "fedadagrad", "adagrad", 0.1


class FedAdam(AdaptiveServerOpt):
    name, rule = "fedadam", "adam"


class FedYogi(AdaptiveServerOpt):
    name, rule = "fedyogi", "yogi"
