"""Aggregation strategies by name.

    fedavg      x += η mean(Δ)                                    fedavg.py
    fedprox     fedavg, and tasks carry the proximal weight mu    fedavg.py
    scaffold    fedavg plus control variates (option II)          scaffold.py
    fedavgm     server momentum on mean(Δ)                        server_opt.py
    fedadagrad, fedadam, fedyogi   adaptive server optimizers     server_opt.py

`strategy_from_config(config)` is the one way a service builds its strategy from a
CoordinatorConfig; `make_strategy(name, hyper, **options)` is the same with explicit options.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.protocol import TaskHyper

from .base import AggregateInput, RoundPlan, ServerState, Strategy
from .fedavg import FedAvg, FedProx
from .scaffold import Scaffold
from .server_opt import FedAdagrad, FedAdam, FedAvgM, FedYogi

if TYPE_CHECKING:
    from ..config import CoordinatorConfig

STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (
    FedAvg, FedProx, Scaffold, FedAvgM, FedAdagrad, FedAdam, FedYogi)}


def make_strategy(name: str, hyper: TaskHyper, **options) -> Strategy:
    """Strategy `name` with its constructor options (server_lr, mu, momentum, beta1, beta2, tau)."""
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    try:
        return STRATEGIES[name](hyper, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"strategy {name!r}: {exc}") from None


def strategy_from_config(config: CoordinatorConfig) -> Strategy:
    """The strategy a CoordinatorConfig names, with the options that apply to it.
    server_lr = 0 picks the strategy's default (see CoordinatorConfig.server_lr)."""
    options: dict = {"server_lr": config.server_lr or None}
    if config.strategy == "fedprox":
        options["mu"] = config.prox_mu
    elif config.strategy == "fedavgm":
        options["momentum"] = config.server_momentum
    elif config.strategy in ("fedadagrad", "fedadam", "fedyogi"):
        options.update(beta1=config.server_beta1, beta2=config.server_beta2, tau=config.server_tau)
    return make_strategy(config.strategy, config.hyper, **options)


__all__ = ["AggregateInput", "RoundPlan", "STRATEGIES", "ServerState", "Strategy", "make_strategy",
           "strategy_from_config"]
