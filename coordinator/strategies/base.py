"""Strategy interface: server state is an immutable value, so a checkpoint is "save the state".

    init(params) -> ServerState
    configure(state) -> TaskHyper for the round's tasks
    apply(state, mean_delta) -> new ServerState

`mean_delta` is the example-weighted mean of the shared-param deltas that passed validation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.protocol import TaskHyper

Params = dict[str, np.ndarray]


@dataclass(frozen=True)
class ServerState:
    version: int  # committed rounds so far
    params: Params  # global shared params
    extra: dict[str, Params] = field(default_factory=dict)  # strategy-specific arrays (momentum, ...)


class Strategy(ABC):
    name = "abstract"

    def __init__(self, hyper: TaskHyper):
        self.hyper = hyper

    def init(self, params: Params) -> ServerState:
        return ServerState(version=0, params={k: np.asarray(v, np.float32).copy() for k, v in params.items()})

    def configure(self, state: ServerState) -> TaskHyper:
        return self.hyper

    @abstractmethod
    def apply(self, state: ServerState, mean_delta: Params) -> ServerState: ...
