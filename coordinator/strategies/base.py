"""Strategy interface: server state is an immutable value, so a checkpoint is "save the state".

    init(params)       -> ServerState            version 0, with the strategy's zeroed extra state
    configure(state)   -> RoundPlan              what every task of the next round carries
    apply(state, agg)  -> ServerState            the next version, from one round's AggregateInput

A strategy is pure: numpy in, numpy out, no I/O, no clock, no RNG. Everything it needs to
resume after a restart lives in `ServerState.extra` (server momentum, Adam moments, SCAFFOLD's
control variate), which the coordinator's RoundStore commits bit-exactly with the params.

`AggregateInput.mean_delta` is what the round's Aggregator (coordinator/aggregate.py) made of
the shared-param deltas that passed validation: their example-weighted mean with the default
"mean", a robust statistic with others (delta = client params - global params, so it points
downhill).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from fedge.edge_runtime.kernel.protocol import TaskHyper

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class ServerState:
    version: int  # committed rounds so far
    params: Params  # global shared params
    extra: dict[str, Params] = field(default_factory=dict)  # strategy-specific arrays (momentum, ...)


@dataclass(frozen=True)
class RoundPlan:
    """What every task of a round carries besides the global params."""

    hyper: TaskHyper
    correction: Params | None = None  # SCAFFOLD: the server control variate c (TrainTask.correction)


@dataclass(frozen=True)
class AggregateInput:
    """One round's accepted updates, reduced."""

    mean_delta: Params  # the accepted deltas combined: their example-weighted mean with aggregator "mean"
    participants: int  # accepted updates, |S|
    population: int  # devices the coordinator knows, N (SCAFFOLD scales c's step by |S|/N)
    mean_control: Params | None = None  # unweighted mean of the accepted Δc_i (SCAFFOLD only)


class Strategy(ABC):
    name = "abstract"
    uses_control = False  # True: tasks carry c and every update must carry Δc_i (SCAFFOLD)
    default_server_lr = 1.0

    def __init__(self, hyper: TaskHyper, server_lr: float | None = None):
        self.hyper = hyper
        self.server_lr = self.default_server_lr if server_lr is None else float(server_lr)
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")

    def init(self, params: Params) -> ServerState:
        params = {k: np.asarray(v, np.float32).copy() for k, v in params.items()}
        return ServerState(version=0, params=params, extra=self.init_extra(params))

    def init_extra(self, params: Params) -> dict[str, Params]:
        """The strategy's extra state at version 0 (zeros of the params' shapes, or nothing)."""
        return {}

    def configure(self, state: ServerState) -> RoundPlan:
        return RoundPlan(self.hyper)

    @abstractmethod
    def apply(self, state: ServerState, agg: AggregateInput) -> ServerState: ...


def zeros_like(params: Params) -> Params:
    return {k: np.zeros(np.shape(v), np.float32) for k, v in params.items()}


def add_scaled(params: Params, step: Params, scale: float) -> Params:
    """params + scale * step, computed in float64 and stored as float32. A sum past float32's
    range becomes inf without numpy's RuntimeWarning: the model guard (guard.py) names it and
    the round is abandoned, so the warning only added an unnamed line to the coordinator's log."""
    with np.errstate(over="ignore"):
        return {k: (np.asarray(v, np.float64) + scale * np.asarray(step[k], np.float64)).astype(np.float32)
                for k, v in params.items()}
