"""FedAvg (McMahan et al. 2017): the new global params are the example-weighted mean of
the clients' params, i.e. params + server_lr * mean(delta) with server_lr = 1."""

from __future__ import annotations

from edge_runtime.protocol import TaskHyper

from .base import Params, ServerState, Strategy


class FedAvg(Strategy):
    name = "fedavg"

    def __init__(self, hyper: TaskHyper, server_lr: float = 1.0):
        super().__init__(hyper)
        if server_lr <= 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr

    def apply(self, state: ServerState, mean_delta: Params) -> ServerState:
        params = {k: v + self.server_lr * mean_delta[k] for k, v in state.params.items()}
        return ServerState(version=state.version + 1, params=params, extra=state.extra)
