"""Which strategy reads which server option (the mutation8-adversary audit): every pair of
--strategy and strategy option, against the README's strategy table written out by hand."""

from __future__ import annotations

import dataclasses

import pytest

from fedge.coordinator.strategies import STRATEGIES
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.simulate.config import SIM_COORDINATOR, SimConfig
from fedge.tools.simulate.flag_checks import check_options_apply

ADAPTIVE = {"fedadagrad", "fedadam", "fedyogi"}
READERS = {"prox_mu": {"fedprox"}, "server_momentum": {"fedavgm"}, "server_beta1": ADAPTIVE,
           "server_beta2": {"fedadam", "fedyogi"}, "server_tau": ADAPTIVE}  # README: "Strategies", the options column


@pytest.mark.parametrize("flag", sorted(READERS))
def test_a_strategy_option_is_taken_by_the_strategies_that_read_it_and_refused_by_the_rest(flag):
    assert set(STRATEGIES) >= {"fedavg", "fedprox", "scaffold", "fedavgm"} | ADAPTIVE
    for strategy in STRATEGIES:
        cfg = SimConfig(coordinator=dataclasses.replace(SIM_COORDINATOR, strategy=strategy))
        if strategy in READERS[flag]:
            check_options_apply(cfg, {flag})
        else:
            with pytest.raises(ConfigError, match=f"--{flag.replace('_', '-')} applies to --strategy .*not {strategy}"):
                check_options_apply(cfg, {flag})
