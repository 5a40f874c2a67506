"""FedAvg (McMahan et al. 2017) and FedProx (Li et al. 2020).

FedAvg: the new global params are the example-weighted mean of the clients' params, i.e.
x + server_lr * mean(delta) with server_lr = 1.

FedProx changes only local training: each client minimises f_i(w) + mu/2 ||w - x||^2. The
task carries mu (TaskHyper.mu) and the device adds mu * (w - x) to every shared param's
gradient (models/graphs.py); aggregation is FedAvg's.
"""

from __future__ import annotations

import dataclasses
import math

from fedge.edge_runtime.kernel.protocol import TaskHyper

from .base import AggregateInput, RoundPlan, ServerState, Strategy, add_scaled


class FedAvg(Strategy):
    name = "fedavg"

    def apply(self, state: ServerState, agg: AggregateInput) -> ServerState:
        params = add_scaled(state.params, agg.mean_delta, self.server_lr)
        return ServerState(version=state.version + 1, params=params, extra=state.extra)


class FedProx(FedAvg):
    name = "fedprox"

    def __init__(self, hyper: TaskHyper, server_lr: float | None = None, mu: float = 0.01):
        super().__init__(hyper, server_lr)
        if not (mu >= 0 and math.isfinite(mu)):
            raise ValueError(f"FedProx mu must be a finite number >= 0, got {mu}")
        self.mu = float(mu)

    def configure(self, state: ServerState) -> RoundPlan:
        return RoundPlan(dataclasses.replace(self.hyper, mu=self.mu))
