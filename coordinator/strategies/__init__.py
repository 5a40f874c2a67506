"""Aggregation strategies by name."""

from __future__ import annotations

from edge_runtime.errors import ConfigError
from edge_runtime.protocol import TaskHyper

from .base import ServerState, Strategy
from .fedavg import FedAvg

STRATEGIES = {"fedavg": FedAvg}


def make_strategy(name: str, hyper: TaskHyper, server_lr: float = 1.0) -> Strategy:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[name](hyper, server_lr=server_lr)


__all__ = ["STRATEGIES", "ServerState", "Strategy", "make_strategy"]
