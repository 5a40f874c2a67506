"""Guard-set screening (coordinator/robust/screening.py) against plain loops of its formula:

    harm_i = L(weighted mean of the kept) - L(weighted mean of the kept but i); drop the most
    harmful while its harm is over the tolerance and more than ceil(min_keep x k) remain

then through a coordinator with a guard set: the committed model is the old one plus the
weighted mean of the kept updates, each loss taken with the device's own predict path, and a
restart mid-round commits the same bits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.coordinator.aggregate import AggregatorContext
from fedge.coordinator.aggregate import make_aggregator as make_registered
from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.metrics import CoordinatorMetrics
from fedge.coordinator.robust import BadRobustParameter, RobustError
from fedge.coordinator.robust.aggregators import (
    ColdStartAggregator,
    RobustConfig,
    RobustState,
    StreamingAggregator,
    make_aggregator,
)
from fedge.coordinator.robust.norm_bound import NormBoundConfig, NormHistory
from fedge.coordinator.robust.screened import ScreenedAggregator
from fedge.coordinator.robust.screening import ScreenConfig, leave_one_out_harm, screen
from fedge.coordinator.store import RoundStore
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.configfile import load_config
from tests.coordinator.fleet import ManualDevice, make_fleet, random_delta
from tests.tiny_model import build_tiny_model

# --- the pure rule ----------------------------------------------------------------------------


def mean_loop(rows, weights):
    """sum_i w_i x_i / sum_i w_i, one coordinate at a time."""
    total = sum(weights)
    return np.array([sum(w * float(r[j]) for r, w in zip(rows, weights)) / total for j in range(len(rows[0]))])


def harm_loop(rows, weights, loss):
    everyone = loss(mean_loop(rows, weights))
    return [everyone - loss(mean_loop(rows[:i] + rows[i + 1:], weights[:i] + weights[i + 1:]))
            for i in range(len(rows))]


def test_harm_matches_a_plain_loop_of_the_formula():
    rng = np.random.default_rng(0)
    target = rng.normal(size=6)
    loss = lambda v: float(np.sum((v - target) ** 2))  # noqa: E731
    rows = [rng.normal(size=6) for _ in range(5)]
    weights = [3.0, 1.0, 7.0, 2.0, 5.0]
    got = leave_one_out_harm(np.stack(rows), weights, loss)
    np.testing.assert_allclose(got, harm_loop(rows, weights, loss), rtol=1e-12, atol=1e-12)


def elimination_loop(rows, weights, loss, tolerance=0.0, min_keep=0.5):
    """Backward elimination written out: every mean taken from scratch."""
    kept = list(range(len(rows)))
    while len(kept) > max(1, math.ceil(min_keep * len(rows))):
        harm = harm_loop([rows[i] for i in kept], [weights[i] for i in kept], loss)
        worst = max(range(len(kept)), key=lambda j: (harm[j], -j))
        if harm[worst] <= tolerance:
            break
        kept.pop(worst)
    return [i in kept for i in range(len(rows))]


def test_a_flipped_update_is_the_harmful_one():
    """Four updates toward the target, one away from it: only the fifth makes the mean worse."""
    rng = np.random.default_rng(1)
    target = rng.normal(size=20)
    loss = lambda v: float(np.sum((v - target) ** 2))  # noqa: E731
    honest = [target + 0.3 * rng.normal(size=20) for _ in range(4)]
    rows = np.stack([*honest, -target])
    harm = leave_one_out_harm(rows, np.ones(5), loss)
    assert harm[4] > 0 and np.all(harm[:4] < 0)
    assert screen(rows, np.ones(5), loss, ScreenConfig()).tolist() == [True] * 4 + [False]


def test_two_colluders_sending_the_same_update_are_both_dropped():
    """Backward elimination takes the harms again after each drop."""
    rng = np.random.default_rng(4)
    target = rng.normal(size=10)
    loss = lambda v: float(np.sum((v - target) ** 2))  # noqa: E731
    rows = np.stack([target + 0.2 * rng.normal(size=10) for _ in range(5)] + [-2 * target] * 2)
    # dropping one colluder alone still leaves the other pulling the mean away
    first = leave_one_out_harm(rows, np.ones(7), loss)
    assert first[5] == first[6] > 0
    cfg = ScreenConfig(tolerance=0.05)  # above the honest rows' noise, far below the colluders' harm
    assert screen(rows, np.ones(7), loss, cfg).tolist() == [True] * 5 + [False] * 2


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cfg", [ScreenConfig(), ScreenConfig(tolerance=0.5), ScreenConfig(min_keep=0.25),
                                 ScreenConfig(min_keep=0.9), ScreenConfig(min_keep=1.0)])
def test_screen_matches_a_plain_loop_of_backward_elimination(seed, cfg):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(1, 9))
    target = rng.normal(size=5) * 2
    loss = lambda v: float(np.sum((v - target) ** 2))  # noqa: E731
    rows = [rng.normal(size=5) for _ in range(k)]
    weights = list(rng.uniform(0.5, 4.0, size=k))
    got = screen(np.stack(rows), weights, loss, cfg)
    assert got.tolist() == elimination_loop(rows, weights, loss, cfg.tolerance, cfg.min_keep)
    assert got.sum() >= max(1, math.ceil(cfg.min_keep * k))


def test_ties_drop_the_earlier_arrival_and_min_keep_holds():
    loss = lambda v: float(np.sum((v - 10.0) ** 2))  # noqa: E731  every row but the best is "harmful"
    rows = np.array([[0.0], [0.0], [0.0], [4.0]])
    assert screen(rows, np.ones(4), loss, ScreenConfig()).tolist() == [False, False, True, True]
    assert screen(rows, np.ones(4), loss, ScreenConfig(min_keep=0.25)).tolist() == [False, False, False, True]
    assert screen(rows[:1], np.ones(1), loss, ScreenConfig(min_keep=0.1)).tolist() == [True]
    # a harm equal to the tolerance stays: two equal updates each have harm exactly 0
    same = np.array([[1.0], [1.0]])
    assert leave_one_out_harm(same, np.ones(2), loss).tolist() == [0.0, 0.0]
    assert screen(same, np.ones(2), loss, ScreenConfig()).tolist() == [True, True]


def test_one_update_has_no_harm_and_non_finite_losses_never_raise():
    assert leave_one_out_harm(np.ones((1, 3)), [2.0], lambda v: 1.0).tolist() == [0.0]
    # every mean blows up: no update is to blame
    assert leave_one_out_harm(np.ones((2, 3)), [1.0, 1.0], lambda v: math.inf).tolist() == [0.0, 0.0]
    # the loss is NaN exactly when the huge update is in: it is infinitely harmful, and dropped first
    rows = np.array([[0.0], [0.1], [1e30]])
    blows_up = lambda v: math.nan if abs(v[0]) > 1e20 else float(v[0] ** 2)  # noqa: E731
    harm = leave_one_out_harm(rows, np.ones(3), blows_up)
    assert harm[2] == math.inf and np.all(np.isfinite(harm[:2]))
    assert screen(rows, np.ones(3), blows_up, ScreenConfig()).tolist() == [True, True, False]
    with pytest.raises(RobustError, match="weight"):
        leave_one_out_harm(np.ones((2, 3)), [1.0, 0.0], lambda v: 1.0)


@pytest.mark.parametrize("bad", [dict(tolerance=-0.1), dict(tolerance=math.nan), dict(min_keep=0.0),
                                 dict(min_keep=1.5), dict(enabled=1)])
def test_screen_config_refuses_bad_values(bad):
    with pytest.raises(BadRobustParameter):
        ScreenConfig(**bad)


def test_screen_settings_load_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    guarded = '[coordinator]\nguard_set = "guard.npz"\n'  # the screen runs with a guard set only (unread_keys.py)
    path.write_text(f"{guarded}[coordinator.robust.screen]\ntolerance = 0.01\nmin_keep = 0.6\n")
    cfg = load_config(CoordinatorConfig, path, "coordinator")
    assert cfg.robust.screen == ScreenConfig(tolerance=0.01, min_keep=0.6)
    path.write_text(f"{guarded}[coordinator.robust.screen]\nmin_keep = 2.0\n")
    with pytest.raises(Exception, match="min_keep"):
        load_config(CoordinatorConfig, path, "coordinator")


# --- the aggregator -----------------------------------------------------------------------------


def _params(vec):
    return {"a": np.asarray(vec[:3], np.float32).reshape(3), "b": np.asarray(vec[3:], np.float32).reshape(2, 2)}


def _vec(params):
    return np.concatenate([params["a"].ravel(), params["b"].ravel()]).astype(np.float64)


def test_the_aggregator_is_norm_bound_on_the_kept_updates():
    """Clip and weight cap as norm_bound's history sets them, the exclusion bound first, then the
    screen: the result is the plain weighted mean of what is kept, clipped and capped."""
    rng = np.random.default_rng(2)
    target = rng.normal(size=7)
    # far along target: every honest row helps the mean; the flipped one does not
    guard = lambda delta: float(np.sum((_vec(delta) - 5 * target) ** 2))  # noqa: E731
    cfg = RobustConfig(norm=NormBoundConfig(multiplier=2.0, min_history=3, weight_multiplier=1.0,
                                            exclude_multiplier=10.0))
    norm = float(np.linalg.norm(target))
    state = RobustState(history=NormHistory((norm, norm, norm)), claims=NormHistory((10.0, 10.0, 10.0)))
    rows = [target * 0.9, target * 1.1 + 0.1, target * 3.0, -target, target * 50.0]  # clipped, flipped, excluded
    claims = [5.0, 8.0, 40.0, 10.0, 10.0]
    agg = make_aggregator("norm_bound", cfg, state, np.random.default_rng(0), guard)
    assert isinstance(agg, ScreenedAggregator)
    for r, w in zip(rows, claims):
        agg.add(_params(r), w)
    got = _vec(agg.mean())
    # oracle: bound 2 x norm, cap 10, row 5 excluded (50 x > 10 x), the flipped row screened out
    bound = 2.0 * norm
    clipped = [r * min(1.0, bound / np.linalg.norm(r)) for r in rows[:4]]
    weights = [min(w, 10.0) for w in claims[:4]]
    kept = elimination_loop(clipped, weights, lambda v: guard(_params(v)))
    assert not kept[3]  # the premise: the flipped row goes
    np.testing.assert_allclose(got, mean_loop([c for c, k in zip(clipped, kept) if k],
                                              [w for w, k in zip(weights, kept) if k]), rtol=1e-6, atol=1e-7)
    assert agg.screened_out == kept.count(False)
    # what the round carries on is norm_bound's: every norm and claim, screened or not
    carried = RobustState.from_extra(agg.carry()["robust"])
    assert carried.history.norms[-5:] == pytest.approx([np.linalg.norm(_vec(_params(r))) for r in rows])
    assert carried.claims.norms[-5:] == tuple(claims)


def test_cold_start_screening_uses_the_rounds_own_medians():
    rng = np.random.default_rng(3)
    target = rng.normal(size=7)
    guard = lambda delta: float(np.sum((_vec(delta) - 5 * target) ** 2))  # noqa: E731
    rows = [target * s for s in (0.9, 1.0, 1.3, 3.0)] + [-target]  # 3.0 is clipped to 2; honest rows above the mean
    agg = make_aggregator("norm_bound", RobustConfig(), RobustState(), np.random.default_rng(0), guard)
    for r in rows:
        agg.add(_params(r), 4.0)
    got = _vec(agg.mean())
    median = float(np.median([np.linalg.norm(_vec(_params(r))) for r in rows]))
    clipped = [_vec(_params(r)) * min(1.0, 2 * median / np.linalg.norm(_vec(_params(r)))) for r in rows]
    kept = elimination_loop(clipped, [4.0] * 5, lambda v: guard(_params(v)))
    assert not kept[4]  # the premise: the flipped row goes
    np.testing.assert_allclose(got, mean_loop([c for c, k in zip(clipped, kept) if k], [4.0] * sum(kept)),
                               rtol=1e-6, atol=1e-7)


def test_no_guard_set_or_screening_off_is_plain_norm_bound():
    guard = lambda delta: 0.0  # noqa: E731
    off = RobustConfig(screen=ScreenConfig(enabled=False))
    assert isinstance(make_aggregator("norm_bound", RobustConfig(), RobustState(), np.random.default_rng(0)),
                      ColdStartAggregator)
    assert isinstance(make_aggregator("norm_bound", off, RobustState(), np.random.default_rng(0), guard),
                      ColdStartAggregator)
    warm = RobustState(history=NormHistory((1.0,) * 5))
    assert isinstance(make_aggregator("norm_bound", off, warm, np.random.default_rng(0), guard), StreamingAggregator)
    # the other rules ignore the guard set; the registry passes it through its context
    assert not isinstance(make_aggregator("median", RobustConfig(), RobustState(), np.random.default_rng(0), guard),
                          ScreenedAggregator)
    ctx = AggregatorContext(1, 0, RobustConfig(), {}, guard)
    assert isinstance(make_registered("norm_bound", ctx), ScreenedAggregator)
    assert isinstance(make_registered("norm_bound", AggregatorContext(1, 0, RobustConfig(), {})), ColdStartAggregator)


# --- through the coordinator -----------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _guarded_fleet(model, tmp_path, store=None, metrics=None):
    from tests.tiny_model import CLASSES, FEATURES

    art, _, _ = model
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(80, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, size=80)
    np.savez(tmp_path / "guard.npz", x=x, y=y)
    fleet = make_fleet(model, tmp_path, clients_per_round=4, min_reports=4, aggregator="norm_bound",
                       artifacts_dir=str(art), guard_set=str(tmp_path / "guard.npz"), guard_max_loss_ratio=100.0,
                       store=store, metrics=metrics)
    devices = [ManualDevice(fleet, f"m{i}", n) for i, n in enumerate((5, 8, 13, 9))]
    fleet.drain()
    return fleet, devices, (x, y)


def _guard_loss_loop(model, x, y):
    """The guard loss without coordinator/holdout.py: the device's predict path, a plain loop."""
    from fedge.edge_runtime.trainer.portable import PortableBackend

    art, manifest, runtime = model
    reference = PortableBackend(art, manifest, "sgd")
    personal = runtime.initial("personal")

    def loss(shared):
        logits = reference.predict({**shared, **personal}, x)["global"].astype(np.float64)
        return float(np.mean([np.logaddexp.reduce(row) - row[label] for row, label in zip(logits, y)]))

    return loss


def _round_updates(c, rng, loss):
    """Three updates near a direction that lowers the guard loss, and one flipped away from it."""
    shapes = {k: v.shape for k, v in c.state.params.items()}
    good = random_delta(shapes, rng, scale=0.05)
    if loss({k: v + good[k] for k, v in c.state.params.items()}) > loss(c.state.params):
        good = {k: -v for k, v in good.items()}
    honest = [{k: v + random_delta({k: v.shape}, rng, 0.01)[k] for k, v in good.items()} for _ in range(3)]
    return [*honest, {k: -3.0 * v for k, v in good.items()}]


def test_a_guarded_coordinator_commits_the_mean_of_the_kept_updates(model, tmp_path):
    metrics = CoordinatorMetrics()
    fleet, devices, (x, y) = _guarded_fleet(model, tmp_path, metrics=metrics)
    c = fleet.coordinator
    loss = _guard_loss_loop(model, x, y)
    rng = np.random.default_rng(8)
    old = {k: v.astype(np.float64) for k, v in c.state.params.items()}
    assert c.begin_round()
    fleet.drain()
    deltas = _round_updates(c, rng, loss)
    for d, delta in zip(devices, deltas):
        d.send(encode_message(d.update(delta)))
    fleet.drain()
    record = c.tick()
    assert record.committed and record.reports == 4
    # oracle: the round's own medians (cold start), harm by the device's predict, the kept mean
    flat = [np.concatenate([delta[k].astype(np.float64).ravel() for k in old]) for delta in deltas]
    norms = [np.linalg.norm(f) for f in flat]
    bound, cap = 2.0 * np.median(norms), np.median([d.n for d in devices])
    clipped = [f * min(1.0, bound / n) for f, n in zip(flat, norms)]
    weights = [min(float(d.n), cap) for d in devices]

    def unflat(v):
        out, at = {}, 0
        for k, value in old.items():
            out[k] = value + v[at:at + value.size].reshape(value.shape)
            at += value.size
        return out

    kept = elimination_loop(clipped, weights, lambda v: loss(unflat(v)))
    assert not kept[3] and sum(kept) >= 2, kept  # the premise: the flipped one goes
    expected = unflat(mean_loop([c for c, k in zip(clipped, kept) if k], [w for w, k in zip(weights, kept) if k]))
    for k, value in expected.items():
        np.testing.assert_allclose(c.state.params[k], value, rtol=1e-5, atol=1e-6)
    assert metrics.registry.get_sample_value("fedge_updates_screened_total") == kept.count(False)


def _two_guarded_rounds(model, tmp_path, restart_mid_round):
    tmp_path.mkdir()
    fleet, devices, (x, y) = _guarded_fleet(model, tmp_path, store=RoundStore(tmp_path / "state.db"))
    c = fleet.coordinator
    loss = _guard_loss_loop(model, x, y)
    rng = np.random.default_rng(9)
    for round_no in (1, 2):
        assert c.begin_round()
        fleet.drain()
        for i, (d, delta) in enumerate(zip(devices, _round_updates(c, rng, loss))):
            d.send(encode_message(d.update(delta, update_id=f"r{round_no}-{i}")))
            fleet.drain()
            if restart_mid_round and round_no == 2 and i == 2:
                c = fleet.restart(store=RoundStore(tmp_path / "state.db"))
                fleet.drain()
        record = c.tick()
        assert record.committed and record.reports == 4
    return c


def test_screening_survives_a_restart_bit_for_bit(model, tmp_path):
    ref = _two_guarded_rounds(model, tmp_path / "ref", restart_mid_round=False)
    got = _two_guarded_rounds(model, tmp_path / "crash", restart_mid_round=True)
    assert ref.state.version == got.state.version == 2
    for name, value in ref.state.params.items():
        assert got.state.params[name].tobytes() == value.tobytes(), name


@pytest.mark.parametrize("seed", range(8))
def test_with_nothing_screened_it_is_norm_bound(seed):
    """A guard loss that never changes drops nothing: the result and the carried state are the
    norm bound's own (cold start and with a history, exclusion and weight caps included)."""
    rng = np.random.default_rng(seed)
    cfg = RobustConfig(norm=NormBoundConfig(min_history=3, exclude_multiplier=float(rng.choice([0.0, 3.0, 10.0]))))
    state = RobustState()
    if seed % 2:
        state = RobustState(history=NormHistory(tuple(rng.uniform(0.5, 2.0, size=6))),
                            claims=NormHistory(tuple(rng.uniform(1, 20, size=6))))
    rows = [rng.normal(size=7) * rng.choice([0.3, 1.0, 8.0]) for _ in range(int(rng.integers(2, 9)))]
    claims = [float(c) for c in rng.uniform(1, 40, size=len(rows))]
    plain = make_aggregator("norm_bound", cfg, state, np.random.default_rng(0))
    screened = make_aggregator("norm_bound", cfg, state, np.random.default_rng(0), lambda delta: 1.0)
    for r, w in zip(rows, claims):
        plain.add(_params(r), w)
        screened.add(_params(r), w)
    np.testing.assert_allclose(_vec(screened.mean()), _vec(plain.mean()), rtol=1e-6, atol=1e-7)
    assert screened.screened_out == 0
    a, b = (RobustState.from_extra(x.carry()["robust"]) for x in (plain, screened))
    assert a.history == b.history and a.claims == b.claims


def test_an_update_that_blows_up_the_guard_loss_is_screened_not_a_crash(model, tmp_path):
    """First round, no history: two zero updates make the round's median norm 0, so nothing is
    clipped; the third holds 1e30s and makes the guard loss non-finite. It is left out and the
    round commits the mean of the others."""
    fleet, devices, _ = _guarded_fleet(model, tmp_path)
    c = fleet.coordinator
    old = {k: v.copy() for k, v in c.state.params.items()}
    assert c.begin_round()
    fleet.drain()
    shapes = {k: v.shape for k, v in old.items()}
    deltas = [{k: np.zeros(s, np.float32) for k, s in shapes.items()}] * 3
    deltas.append({k: np.full(s, 1e30, np.float32) for k, s in shapes.items()})
    for d, delta in zip(devices, deltas):
        d.send(encode_message(d.update(delta)))
    fleet.drain()
    record = c.tick()
    assert record.committed and record.reports == 4
    for k, value in old.items():
        np.testing.assert_array_equal(c.state.params[k], value)  # the mean of three zero deltas
