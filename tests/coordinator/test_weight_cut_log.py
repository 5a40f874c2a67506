"""The norm bound's relative weight cap, seen by an operator: an update whose claim the cap
(weight_multiplier x the median claim) cut by more than 4x is counted
(`fedge_claims_cut_total`) and its device logged, at most once per CUT_LOG_ROUNDS rounds;
before, such a device was invisible. Equal honest claims are not."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.coordinator.left_out import CUT_LOG_ROUNDS, LeftOut
from fedge.coordinator.metrics import CoordinatorMetrics
from fedge.edge_runtime.kernel.codec import encode_message
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _round(model, tmp_path, claims, caplog):
    metrics = CoordinatorMetrics()
    fleet = make_fleet(model, tmp_path, clients_per_round=len(claims), min_reports=len(claims),
                       aggregator="norm_bound", metrics=metrics)
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate(claims)]
    fleet.drain()
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    rng = np.random.default_rng(5)
    assert c.begin_round()
    fleet.drain()
    for d in devices:
        d.send(encode_message(d.update(random_delta(shapes, rng, 0.01))))
    fleet.drain()
    with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
        record = c.tick()
    assert record.committed and record.reports == len(claims)
    return metrics.registry.get_sample_value("fedge_claims_cut_total"), [
        r.getMessage() for r in caplog.records if "weight cap" in r.getMessage()]


def test_a_claim_100x_the_others_is_counted_once_and_its_device_named(model, tmp_path, caplog):
    # oracle: the first round caps each weight at 1 x the median claim, 10: 1000 is cut 100x
    count, lines = _round(model, tmp_path, [10, 10, 10, 1000], caplog)
    assert count == 1
    assert len(lines) == 1 and "m3 claimed 1000, weighted 10" in lines[0] and "m0" not in lines[0]


def test_equal_honest_claims_are_not(model, tmp_path, caplog):
    count, lines = _round(model, tmp_path, [10, 10, 10, 10], caplog)
    assert count == 0 and lines == []


def test_a_device_cut_every_round_is_logged_once_per_cut_log_rounds(caplog):
    """Counted every round, logged again only CUT_LOG_ROUNDS rounds after its last line."""
    metrics, left_out = CoordinatorMetrics(), LeftOut()

    class Agg:
        weight_cut = [("big", 1000.0, 10.0)]

    with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
        for round_id in range(1, 2 * CUT_LOG_ROUNDS + 1):
            left_out.note(round_id, Agg(), metrics)
    assert metrics.registry.get_sample_value("fedge_claims_cut_total") == 2 * CUT_LOG_ROUNDS
    logged = [r.getMessage() for r in caplog.records if "big claimed 1000" in r.getMessage()]
    assert [m.split(":")[0] for m in logged] == ["round 1", f"round {CUT_LOG_ROUNDS + 1}"]


@pytest.mark.parametrize("history, guard", [(False, False), (True, False), (False, True), (True, True)])
def test_every_norm_bound_aggregator_reports_the_claims_cut_over_4x(history, guard):
    """Cold start (the round's own median claim), streaming (the history's), screened (either):
    oracle, a plain loop over the claims against 4 x the cap the aggregator applies."""
    from types import SimpleNamespace

    from fedge.coordinator.robust.aggregators import RobustConfig, RobustState, make_aggregator
    from fedge.coordinator.robust.norm_bound import NormHistory

    cfg = RobustConfig()
    state = RobustState(NormHistory((1.0,) * 10), None, NormHistory((20.0,) * 10)) if history else RobustState()
    rng = np.random.default_rng(0)
    agg = make_aggregator("norm_bound", cfg, state, rng, (lambda params: 0.0) if guard else None)
    claims = [10.0, 12.0, 50.0, 81.0, 1000.0]
    for i, claim in enumerate(claims):
        agg.add({"w": rng.normal(size=3).astype(np.float32) * 0.1}, SimpleNamespace(weight=claim, device_id=f"d{i}"))
    agg.mean()
    cap = 20.0 if history else float(np.median(claims))  # weight_multiplier 1 x the median claim
    assert agg.weight_cut == [(f"d{i}", c, cap) for i, c in enumerate(claims) if c > 4 * cap]
    assert [d for d, _, _ in agg.weight_cut] == (["d3", "d4"] if history else ["d4"])


def test_a_sharded_round_reads_the_cuts_of_the_rule_it_wraps():
    """The leader's note() reads weight_cut off a sharded round's SealedAggregator too."""
    from types import SimpleNamespace

    from fedge.coordinator.sharding.sealed import SealedAggregator

    inner = SimpleNamespace(weight_cut=[("d4", 1000.0, 10.0)])
    assert SealedAggregator(inner, None, 1, 2, {}, None).weight_cut == [("d4", 1000.0, 10.0)]
    assert SealedAggregator(SimpleNamespace(), None, 1, 2, {}, None).weight_cut == []
