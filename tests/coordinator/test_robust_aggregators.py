"""The rules as round aggregators: the same numbers as the pure functions, across rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.coordinator.aggregate import weighted_mean_naive
from fedge.coordinator.robust import TooManyByzantine, centered_clipping, coordinate_median, multi_krum, trimmed_mean
from fedge.coordinator.robust.aggregators import (
    AGGREGATORS,
    RobustConfig,
    RobustState,
    advance,
    make_aggregator,
)
from fedge.coordinator.robust.bucketing import bucket_means
from fedge.coordinator.robust.errors import BadRobustParameter
from fedge.coordinator.robust.norm_bound import NormBoundConfig


def updates(seed, k=7):
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
            for _ in range(k)], list(rng.uniform(1, 20, size=k))


def flat(u):
    return np.concatenate([u["b"].astype(np.float64).ravel(), u["w"].astype(np.float64).ravel()])


def run(name, cfg, state, us, ws, seed=0):
    agg = make_aggregator(name, cfg, state, np.random.default_rng(seed))
    for u, w in zip(us, ws):
        agg.add(u, w)
    return agg, agg.mean()


def test_mean_is_the_weighted_mean():
    us, ws = updates(0)
    _, out = run("mean", RobustConfig(), RobustState(), us, ws)
    expect = weighted_mean_naive(us, ws)
    for k in expect:
        assert out[k].dtype == np.float32 and out[k].shape == us[0][k].shape
        np.testing.assert_allclose(out[k], expect[k], rtol=1e-6)


@pytest.mark.parametrize("name,rule", [
    ("median", coordinate_median),
    ("trimmed_mean", lambda x: trimmed_mean(x, 0.2)),
    ("krum", lambda x: multi_krum(x, math.floor(0.2 * len(x)))),
])
def test_keep_all_rules_match_the_functions(name, rule):
    us, ws = updates(1)
    _, out = run(name, RobustConfig(), RobustState(), us, ws)
    got = np.concatenate([out["b"].ravel(), out["w"].ravel()])
    np.testing.assert_allclose(got, rule(np.stack([flat(u) for u in us])).astype(np.float32), rtol=1e-6)


def test_bucketing_wraps_the_rule_with_the_rounds_rng():
    us, ws = updates(2, k=9)
    _, out = run("median", RobustConfig(bucket_size=3), RobustState(), us, ws, seed=4)
    x = np.stack([flat(u) for u in us])
    expect = coordinate_median(bucket_means(x, 3, np.random.default_rng(4)))
    np.testing.assert_allclose(np.concatenate([out["b"].ravel(), out["w"].ravel()]), expect, rtol=1e-6)


def test_norm_bound_and_centered_clipping_learn_across_rounds():
    cfg = RobustConfig(norm=NormBoundConfig(multiplier=2.0, min_history=3))
    state = RobustState()
    us, ws = updates(3)
    us[0] = {k: v * 50 for k, v in us[0].items()}  # one long update, and one huge claim, in round 1
    ws = [1e6] + ws[1:]
    agg, out = run("norm_bound", cfg, state, us, ws)
    # Round 1, no history: the round's own medians bound the norms and the weights (a plain loop).
    norms = [np.linalg.norm(flat(u)) for u in us]
    bound, cap = 2.0 * np.median(norms), cfg.norm.weight_multiplier * np.median(ws)
    excluded = cfg.norm.exclude_multiplier * np.median(norms)  # the 50x update is left out, not clipped in
    total, weight = np.zeros(10), 0.0
    for u, w in zip(us, ws):
        if np.linalg.norm(flat(u)) > excluded:
            continue
        x, w = flat(u), min(w, cap)
        total += w * x * min(1.0, bound / np.linalg.norm(x))
        weight += w
    np.testing.assert_allclose(flat(out), total / weight, rtol=1e-5, atol=1e-7)
    state = advance(state, agg, cfg)
    assert state.claims.weight_cap(cfg.norm) == pytest.approx(cap)  # the claims as made, before the cap
    assert state.history.bound(cfg.norm) == pytest.approx(2.0 * np.median(norms))
    huge = [{k: v * 1000 for k, v in us[0].items()}]
    agg, out = run("norm_bound", cfg, state, us + huge, ws + [1.0])
    assert agg.acc.clipped >= 1
    assert np.linalg.norm(np.concatenate([out["b"].ravel(), out["w"].ravel()])) <= 2.0 * np.median(norms) + 1e-5
    # centered clipping starts from the last aggregate with the running median norm as radius
    agg, out = run("centered_clipping", cfg, state, us, ws)
    x = np.stack([flat(u) for u in us])
    expect = centered_clipping(x, float(np.median(norms)), 3, state.center)
    np.testing.assert_allclose(np.concatenate([out["b"].ravel(), out["w"].ravel()]), expect, rtol=1e-5, atol=1e-7)


def test_names_and_errors():
    assert set(AGGREGATORS) == {"mean", "norm_bound", "median", "trimmed_mean", "krum", "centered_clipping"}
    with pytest.raises(BadRobustParameter):
        make_aggregator("bulyan", RobustConfig(), RobustState(), np.random.default_rng(0))
    for bad in (dict(byzantine_fraction=0.5), dict(cc_iterations=0), dict(bucket_size=-1), dict(cc_tau=-1.0)):
        with pytest.raises(BadRobustParameter):
            RobustConfig(**bad)


def test_krum_lowers_f_to_what_a_small_round_allows():
    cfg = RobustConfig(byzantine_fraction=0.4)
    for k, f in ((3, 0), (4, 0), (5, 1), (6, 1), (10, 3)):  # floor(0.4 k) capped at (k - 3) // 2
        us, ws = updates(6, k=k)
        _, out = run("krum", cfg, RobustState(), us, ws)
        expect = multi_krum(np.stack([flat(u) for u in us]), f)
        np.testing.assert_allclose(np.concatenate([out["b"].ravel(), out["w"].ravel()]), expect, rtol=1e-6)
        if f < math.floor(0.4 * k):
            with pytest.raises(TooManyByzantine):  # the plain rule would refuse this round
                multi_krum(np.stack([flat(u) for u in us]), math.floor(0.4 * k))
    us, ws = updates(7, k=2)
    _, out = run("krum", cfg, RobustState(), us, ws)  # below 3 inputs: the coordinate median
    np.testing.assert_allclose(np.concatenate([out["b"].ravel(), out["w"].ravel()]),
                               coordinate_median(np.stack([flat(u) for u in us])), rtol=1e-6)


def test_coordinator_config_chooses_an_aggregator_by_name(tmp_path):
    from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
    from fedge.edge_runtime.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="aggregator 'bulyan'"):
        CoordinatorConfig(aggregator="bulyan")
    with pytest.raises(ConfigError, match="bucket_size"):
        CoordinatorConfig(aggregator="norm_bound", robust=RobustConfig(bucket_size=2))
    path = tmp_path / "coordinator.toml"
    path.write_text('aggregator = "krum"\n[robust]\nbyzantine_fraction = 0.3\nbucket_size = 2\n'
                    '[robust.norm]\nwindow = 50\n')  # krum records its norms into the history, cut to window
    cfg = load_coordinator_config(path)
    assert cfg.aggregator == "krum" and cfg.robust.byzantine_fraction == 0.3 and cfg.robust.bucket_size == 2
    assert cfg.robust.norm.window == 50 and cfg.robust.cc_iterations == 3
    path.write_text("[robust]\nbyzantine_fraction = 0.7\n")
    with pytest.raises(ConfigError, match="byzantine_fraction"):
        load_coordinator_config(path)


def test_robust_state_round_trips_through_server_state_extra():
    cfg = RobustConfig()
    state = RobustState()
    assert RobustState.from_extra(None) == state and RobustState.from_extra(state.to_extra()).center is None
    us, ws = updates(8)
    agg, _ = run("centered_clipping", cfg, state, us, ws)
    state = advance(state, agg, cfg)
    back = RobustState.from_extra({k: v.copy() for k, v in state.to_extra().items()})
    assert back.history == state.history
    np.testing.assert_array_equal(back.center, state.center)
    assert back.center.dtype == np.float64 and state.to_extra()["norms"].dtype == np.float64


def test_a_simulated_coordinator_commits_its_robust_state(tmp_path):
    from fedge.tools.simulate.config import sim_config
    from fedge.tools.simulate.fleet import InMemoryFleet, prepare

    for aggregator in ("norm_bound", "mean"):
        setup = prepare(sim_config(dataset="digits", devices=4, rounds=2, clients_per_round=3,
                                  out_dir=str(tmp_path / aggregator), aggregator=aggregator))
        fleet = InMemoryFleet(setup)
        reports = sum(fleet.run_round().reports for _ in range(2))
        extra = fleet.coordinator.state.extra
        if aggregator == "mean":
            assert "robust" not in extra  # the plain mean learns nothing and stores nothing
        else:
            assert len(extra["robust"]["norms"]) == reports
            assert fleet.coordinator.begin_round()  # the next round's aggregator starts from what was committed
            assert fleet.coordinator.round.aggregator.prior.history.norms == tuple(extra["robust"]["norms"])


class _Meta:
    def __init__(self, device_id, weight):
        self.device_id, self.weight = device_id, weight


@pytest.mark.parametrize("kind", ["history", "cold_start", "screened"])
@pytest.mark.parametrize("seed", range(8))
def test_the_norm_bound_names_the_updates_its_exclusion_left_out(kind, seed):
    """Oracle: a plain loop over the norms against multiplier x the median norm (of the history,
    or of the round's own norms in the first rounds), times each update's claim allowance
    (its claim over the median claim, between 1 and exclude_claim_allowance); when every update
    is over its bound, none is left out (the bound is stale and they are clipped in)."""
    rng = np.random.default_rng(seed)
    cfg = RobustConfig(norm=NormBoundConfig(exclude_multiplier=float(rng.choice([3.0, 4.0, 10.0])),
                                            exclude_claim_allowance=float(rng.choice([1.0, 2.5, 6.0]))))
    scales = rng.choice([0.5, 1.0, 2.0, 5.0, 30.0], size=8)
    claims = rng.choice([5.0, 10.0, 20.0, 60.0], size=8)
    us = [{"w": (s * rng.normal(size=(3, 2))).astype(np.float32), "b": (s * rng.normal(size=4)).astype(np.float32)}
          for s in scales]
    norms = [float(np.linalg.norm(flat(u))) for u in us]
    history = tuple(rng.uniform(0.5, 6.0, size=10)) if kind != "cold_start" else ()
    history_claims = tuple(rng.uniform(5.0, 30.0, size=10)) if history else ()
    state = RobustState(history=RobustState().history.record(history, cfg.norm),
                        claims=RobustState().claims.record(history_claims, cfg.norm))
    median = float(np.median(history)) if history else float(np.median(norms))
    median_claim = float(np.median(history_claims)) if history else float(np.median(claims))
    over = [max(cfg.norm.exclude_multiplier, cfg.norm.multiplier) * median
            * min(max(c / median_claim, 1.0), cfg.norm.exclude_claim_allowance) for c in claims]
    expect = [f"dev-{i}" for i, (n, o) in enumerate(zip(norms, over)) if n > o]
    if len(expect) == len(us):
        expect = []
    guard = (lambda params: 1.0) if kind == "screened" else None  # a flat loss: screening keeps every update
    agg = make_aggregator("norm_bound", cfg, state, np.random.default_rng(0), guard_loss=guard)
    for i, (u, c) in enumerate(zip(us, claims)):
        agg.add(u, _Meta(f"dev-{i}", c))
    agg.mean()
    assert agg.excluded_ids == expect
    assert getattr(agg, "screened_ids", []) == []


def test_nothing_is_named_when_every_update_is_over_the_stale_bound():
    cfg = RobustConfig()
    state = RobustState(history=RobustState().history.record([1e-3] * 10, cfg.norm))
    agg = make_aggregator("norm_bound", cfg, state, np.random.default_rng(0))
    for i, (u, _) in enumerate(zip(*updates(2, k=4))):
        agg.add(u, _Meta(f"dev-{i}", 1.0))
    agg.mean()
    assert agg.count == 4 and agg.excluded_ids == [] and all(agg.acc.left_out)  # all over it, none named


@pytest.mark.parametrize("guard", [None, lambda params: 1.0])
def test_a_larger_claim_widens_the_exclusion_bound_up_to_the_allowance(guard):
    """History: median norm 1, median claim 10; bound 4 x 1. A norm-5 update is left out at a
    typical claim, kept when it claims twice the median (allowance 2), and left out again at
    norm 11 even when it claims 100 (the allowance stops at 2.5: bound 10)."""
    cfg = RobustConfig(norm=NormBoundConfig(exclude_claim_allowance=2.5))
    state = RobustState(history=RobustState().history.record([1.0] * 10, cfg.norm),
                        claims=RobustState().claims.record([10.0] * 10, cfg.norm))
    agg = make_aggregator("norm_bound", cfg, state, np.random.default_rng(0), guard_loss=guard)
    updates = (("typical", 5.0, 10.0), ("twice", 5.0, 20.0), ("liar", 11.0, 100.0), ("small", 0.5, 10.0))
    for name, norm, claim in updates:
        agg.add({"w": np.array([norm, 0.0], np.float32)}, _Meta(name, claim))
    agg.mean()
    assert agg.excluded_ids == ["typical", "liar"]
    plain = make_aggregator("norm_bound", RobustConfig(), state, np.random.default_rng(0), guard_loss=guard)
    for name, norm, claim in (("typical", 5.0, 10.0), ("twice", 5.0, 20.0), ("small", 0.5, 10.0)):
        plain.add({"w": np.array([norm, 0.0], np.float32)}, _Meta(name, claim))
    plain.mean()
    assert plain.excluded_ids == ["typical", "twice"]  # the default: no allowance


def test_an_update_added_after_a_mean_is_in_the_next_mean():
    """mean() reduces once per set of updates (a retried close must not draw the RNG again), but
    a set that grew is a new set: its mean is over every update, here the median of three."""
    us, ws = updates(9, k=3)
    agg = make_aggregator("median", RobustConfig(), RobustState(), np.random.default_rng(0))
    for u, w in zip(us[:2], ws[:2]):
        agg.add(u, w)
    agg.mean()
    agg.add(us[2], ws[2])
    out = agg.mean()
    want = [sorted(column)[1] for column in zip(*(flat(u).tolist() for u in us))]  # the middle of three
    np.testing.assert_array_equal(np.concatenate([out["b"].ravel(), out["w"].ravel()]), np.float32(want))
