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

ADAPTIVE = ("fedadagrad", "fedadam", "fedyogi")
# The CoordinatorConfig options only some strategies read, and which: strategy_from_config passes
# the first five, and records.open_round checks control_norm_bound in a SCAFFOLD round only (any
# other round refuses a Δc_i outright). One set for another strategy would change nothing, so it
# is refused: written in a config file (coordinator/unread_keys.py) or typed as a `fedge simulate`
# flag (tools/simulate/flag_checks.py). server_lr is not here: every strategy steps by it (base.py).
# FedAdagrad's v sums the squared deltas (server_opt.adaptive_step): it has no second-moment decay.
STRATEGY_OPTIONS: dict[str, tuple[str, ...]] = {
    "prox_mu": ("fedprox",), "server_momentum": ("fedavgm",), "server_beta1": ADAPTIVE,
    "server_beta2": ("fedadam", "fedyogi"), "server_tau": ADAPTIVE, "control_norm_bound": ("scaffold",)}


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
    elif config.strategy in ADAPTIVE:
        options.update(beta1=config.server_beta1, beta2=config.server_beta2, tau=config.server_tau)
    return make_strategy(config.strategy, config.hyper, **options)


__all__ = ["ADAPTIVE", "AggregateInput", "RoundPlan", "STRATEGIES", "STRATEGY_OPTIONS", "ServerState", "Strategy",
           "make_strategy", "strategy_from_config"]
