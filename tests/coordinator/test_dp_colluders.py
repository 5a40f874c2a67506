"""Distributed DP with colluding devices (secure_aggregation.corrupt): the noise is calibrated for
the masked inputs that are not from the ceil(corrupt * asked) devices that may add none
(coordinator/dp/distributed.py, honest_inputs). Oracle: Kairouz et al. 2021's Thm. 1-2 written
out (test_dp_distributed._paper_z_eff) with only the honest devices' noise in the sum."""

from __future__ import annotations

import dataclasses
import math

import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.distributed import honest_inputs, params_for
from fedge.coordinator.secagg.config import SecAggConfig
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.secagg.messages import SecAggTask
from tests.coordinator.fleet import make_fleet
from tests.coordinator.test_dp_distributed import PRIVATE, SECURE, SETTINGS, _paper_z_eff, _run_round
from tests.tiny_model import build_tiny_model


def test_honest_inputs_leaves_out_the_ceiling_of_the_colluding_share():
    assert honest_inputs(10, 30, 0.1) == 7
    assert honest_inputs(10, 100, 0.07) == 3  # 0.07 * 100 is 7.000000000000001 in floats: still 7
    assert honest_inputs(10, 31, 0.1) == 6  # 3.1 devices: 4 may collude
    assert honest_inputs(5, 5, 0.0) == 5
    with pytest.raises(ValueError, match="no noise"):
        honest_inputs(3, 30, 0.1)


@pytest.mark.parametrize("z,d,n_min,n_max,corrupt", [(2.0, 610, 3, 5, 0.2), (1.0, 610, 10, 13, 0.1),
                                                     (1.0, 5000, 80, 130, 0.05)])
def test_the_noise_still_covers_the_charge_when_the_colluders_add_none(z, d, n_min, n_max, corrupt):
    silent = math.ceil(round(corrupt * n_max, 9))
    trusting = params_for(z, 0.5, 2.0 / math.sqrt(d), d, n_min, n_max, 16)
    calibrated = params_for(z, 0.5, 2.0 / math.sqrt(d), d, honest_inputs(n_min, n_max, corrupt), n_max, 16)
    # with every device trusted, the silent ones leave the sum short of the charge: the gap is real
    assert _paper_z_eff(trusting.sigma, n_min - silent, 0.5 / trusting.gamma, d) < z * (1 - 1e-3)
    assert _paper_z_eff(calibrated.sigma, n_min - silent, 0.5 / calibrated.gamma, d) >= z * (1 - 1e-9)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def test_a_secure_round_announces_the_sigma_for_the_honest_inputs(model, tmp_path, monkeypatch):
    # corrupt = 0.2 sizes a graph that needs all 5 of a cohort of 5 (rule 2 at sigma = 40), so no
    # round of this size runs; the graph of corrupt = 0 lets this one run, with the noise's rule
    graph = SecAggConfig.graph_for
    monkeypatch.setattr(SecAggConfig, "graph_for", lambda sa, cohort: graph(SECURE, cohort))
    settings = {**SETTINGS, "secure_aggregation": dataclasses.replace(SECURE, corrupt=0.2)}
    fleet = make_fleet(model, tmp_path, sizes=(12, 20, 16, 24, 18), aggregator="mean", min_reports=3, **settings)
    record = _run_round(fleet, SECURE.stage_deadline_s)
    assert record.committed, record.why
    (task,) = {m.spec for m in fleet.wire if isinstance(m, SecAggTask)}
    d = sum(v.size for v in fleet.coordinator.state.params.values())
    # quorum 3 of 5 asked, ceil(0.2 * 5) = 1 may add no noise: calibrated for 2
    expected = params_for(PRIVATE.noise_multiplier, PRIVATE.clip_norm, SECURE.clip_range, d, 2, 5, 16)
    assert (task.dp_gamma, task.dp_sigma) == (expected.gamma, expected.sigma)
    assert _paper_z_eff(task.dp_sigma, 2, PRIVATE.clip_norm / task.dp_gamma, d) >= PRIVATE.noise_multiplier * (1 - 1e-9)


def test_the_config_refuses_colluders_that_could_be_every_input():
    settings = {**SETTINGS, "secure_aggregation": dataclasses.replace(SECURE, corrupt=0.2)}
    # 20 a round: a cohort of up to 26, the least that hides a device from 20% colluders
    assert CoordinatorConfig(aggregator="mean", clients_per_round=20, min_reports=7, **settings)
    with pytest.raises(ConfigError, match="no noise is left"):  # ceil(0.2 * ceil(20 * 1.3)) = 6 of a quorum of 6
        CoordinatorConfig(aggregator="mean", clients_per_round=20, min_reports=6, **settings)
    low_mask = {**settings, "secure_aggregation": dataclasses.replace(SECURE, corrupt=0.2, mask_min=6)}
    with pytest.raises(ConfigError, match="no noise is left"):  # the mask stage's own minimum is lower
        CoordinatorConfig(aggregator="mean", clients_per_round=20, min_reports=7, **low_mask)
    with pytest.raises(ConfigError, match="secagg_too_many_corrupt"):  # 5 a round: no cohort could run
        CoordinatorConfig(aggregator="mean", clients_per_round=5, min_reports=3, **settings)
    with pytest.raises(ConfigError, match="sharded"):
        CoordinatorConfig(aggregator="mean", clients_per_round=20, min_reports=7, shards=2,
                          state_dsn="postgresql://db/fedge", **settings)
