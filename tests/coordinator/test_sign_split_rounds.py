"""[robust.sign]: the gated sign split composed with norm_bound (robust/screened.py), through the
aggregator, the config loader and the coordinator. Oracles: norm_bound's clip and cap by hand,
the plain weighted mean of what is kept; the split's own decisions are checked against a loop
in test_sign_split.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.coordinator.aggregate import AggregatorContext
from fedge.coordinator.aggregate import make_aggregator as make_registered
from fedge.coordinator.config import CoordinatorConfig, load_coordinator_config
from fedge.coordinator.metrics import CoordinatorMetrics
from fedge.coordinator.robust.aggregators import RobustConfig, RobustState, _make, make_aggregator
from fedge.coordinator.robust.norm_bound import NormHistory
from fedge.coordinator.robust.screened import ScreenedAggregator
from fedge.coordinator.robust.sign_split import SignSplitConfig
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ConfigError
from tests.coordinator.fleet import ManualDevice, make_fleet, refuse_first_commit
from tests.coordinator.test_sign_split import non_iid_round
from tests.tiny_model import build_tiny_model

ON = SignSplitConfig(gap=4.0, share=1.0)


def _params(vec):
    return {"a": np.asarray(vec[:40], np.float32), "b": np.asarray(vec[40:], np.float32).reshape(20, 3)}


def _vec(params):
    return np.concatenate([params["a"].ravel(), params["b"].ravel()]).astype(np.float64)


def _run(cfg, state, rows, claims, guard=None, seed=0, ids=None):
    agg = make_aggregator("norm_bound", cfg, state, np.random.default_rng(seed), guard)
    for i, (r, w) in enumerate(zip(rows, claims)):
        agg.add(_params(r), type("Meta", (), {"weight": w, "device_id": (ids or {}).get(i, f"d{i}")})())
    return agg, _vec(agg.mean())


def _mean_loop(rows, weights):
    total = [0.0] * len(rows[0])
    for r, w in zip(rows, weights):
        total = [t + w * v for t, v in zip(total, r)]
    return np.array([t / sum(weights) for t in total])


def _rows32(rows):
    return [_vec(_params(r)) for r in rows]  # what the aggregator sees: the float32 wire values


WARM = RobustState(history=NormHistory((40.0,) * 5), claims=NormHistory((10.0,) * 5))


@pytest.mark.parametrize("state", [RobustState(), WARM], ids=["cold_start", "history"])
def test_the_split_off_leaves_norm_bound_bit_identical(state):
    """gap = 0 (the default) builds today's norm_bound aggregator whatever the other sign keys say."""
    rows = non_iid_round(np.random.default_rng(0), 100, 10, flipped=2)
    claims = [float(c) for c in np.random.default_rng(1).integers(5, 20, 10)]
    plain = _make("norm_bound", RobustConfig(), state, np.random.default_rng(0))
    for r, w in zip(rows, claims):
        plain.add(_params(r), w)
    want = _vec(plain.mean())
    for sign in (SignSplitConfig(), SignSplitConfig(share=0.5, min_inputs=9, round_clip=3.0)):
        agg, got = _run(RobustConfig(sign=sign), state, rows, claims)
        assert type(agg) is type(plain) and not isinstance(agg, ScreenedAggregator)
        assert got.tobytes() == want.tobytes()


def test_the_split_leaves_out_the_flipped_and_takes_norm_bounds_mean_of_the_rest():
    rows = non_iid_round(np.random.default_rng(2), 100, 10, flipped=2) * 10  # norms ~ 20-40: some clipped
    claims = [8.0, 9.0, 10.0, 12.0, 30.0, 10.0, 11.0, 10.0, 9.0, 14.0]
    agg, got = _run(RobustConfig(sign=ON), WARM, rows, claims)
    assert isinstance(agg, ScreenedAggregator) and agg.task_clip == 80.0
    assert agg.sign_split_ids == ["d0", "d1"] and agg.excluded_ids == [] and agg.screened_ids == []
    # oracle: bound 2 x 40, cap 1 x 10, the two flipped rows out, the weighted mean of the rest
    x = _rows32(rows)
    clipped = [r * min(1.0, 80.0 / float(np.linalg.norm(r))) for r in x[2:]]
    assert any(np.linalg.norm(r) > 80.0 for r in x[2:])  # the premise: the clip binds
    np.testing.assert_allclose(got, _mean_loop(clipped, [min(w, 10.0) for w in claims[2:]]), rtol=1e-6, atol=1e-6)
    # what the round carries on is norm_bound's: every norm and claim, split out or not
    carried = RobustState.from_extra(agg.carry()["robust"])
    assert carried.claims.norms[-10:] == tuple(claims)


def test_round_clip_clips_the_kept_to_c_times_their_median():
    rows = non_iid_round(np.random.default_rng(3), 100, 10, flipped=2) * np.linspace(0.5, 2.0, 10)[:, None]
    agg, got = _run(RobustConfig(sign=SignSplitConfig(gap=4.0, share=1.0, round_clip=1.0)), RobustState(), rows,
                    [1.0] * 10)
    assert agg.sign_split_ids == ["d0", "d1"]
    x = _rows32(rows)
    median = float(np.median([np.linalg.norm(r) for r in x]))  # cold start: 2 x the round's own median
    kept = [r * min(1.0, 2 * median / float(np.linalg.norm(r))) for r in x[2:]]
    kept_median = sorted(float(np.linalg.norm(r)) for r in kept)[3:5]
    bound = sum(kept_median) / 2
    want = _mean_loop([r * min(1.0, bound / float(np.linalg.norm(r))) for r in kept], [1.0] * 8)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_with_a_guard_set_the_screen_sees_only_what_the_split_kept():
    rows = non_iid_round(np.random.default_rng(4), 100, 10, flipped=2)
    seen = []

    def guard(delta):
        seen.append(1)
        return 0.0  # a flat loss: the screen keeps everything it is given

    agg, got = _run(RobustConfig(sign=ON), RobustState(), rows, [1.0] * 10, guard=guard)
    assert agg.sign_split_ids == ["d0", "d1"] and agg.screened_ids == []
    assert len(seen) == 1 + 8  # the mean and leave-one-out over the 8 kept
    x = _rows32(rows)
    median = float(np.median([np.linalg.norm(r) for r in x]))
    want = _mean_loop([r * min(1.0, 2 * median / float(np.linalg.norm(r))) for r in x[2:]], [1.0] * 8)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_a_replayed_round_makes_the_same_split():
    """The registry's aggregator draws from (seed, round): built twice for one round (a restart
    replays the open round into a fresh one) it leaves out the same updates, bit for bit."""
    rows = non_iid_round(np.random.default_rng(5), 2000, 10, flipped=2)
    cfg = RobustConfig(sign=SignSplitConfig(gap=4.0))  # share 0.1: the drawn columns matter
    out = []
    for _ in range(2):
        agg = make_registered("norm_bound", AggregatorContext(7, 3, cfg, {}))
        for i, r in enumerate(rows):
            agg.add({"a": r.astype(np.float32)}, type("M", (), {"weight": 1.0, "device_id": f"d{i}"})())
        result = agg.mean()["a"].tobytes()
        out.append((agg.sign_split_ids, result))
    assert out[0] == out[1] and out[0][0] == ["d0", "d1"]


def test_sign_settings_load_from_toml_and_bad_ones_are_refused(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[robust.sign]\ngap = 4.0\nshare = 0.2\nmin_inputs = 5\nround_clip = 1.5\n")
    assert load_coordinator_config(path).robust.sign == SignSplitConfig(gap=4.0, share=0.2, min_inputs=5,
                                                                        round_clip=1.5)
    assert CoordinatorConfig().robust.sign == SignSplitConfig() and not CoordinatorConfig().robust.sign.enabled
    for text, match in (("gap = -1.0", "c.toml: robust.sign.gap must"), ("share = 0.0", "robust.sign.share must"),
                        ("min_inputs = 2", "robust.sign.min_inputs must"),
                        ("round_clip = 0.5", "robust.sign.round_clip must"),
                        ("gaps = 4.0", r"unknown key\(s\) 'gaps' \(did you mean 'gap'\?\)"),
                        ('gap = "4"', "robust.sign.gap: expected a number")):
        path.write_text(f"[robust.sign]\n{text}\n")
        with pytest.raises(ConfigError, match=match):
            load_coordinator_config(path)
    # on paper only: another aggregator, or fewer reports a round than the split needs
    on = RobustConfig(sign=SignSplitConfig(gap=4.0, min_inputs=5))
    with pytest.raises(ConfigError, match="robust.sign.gap works with the norm_bound aggregator, not 'krum'"):
        CoordinatorConfig(aggregator="krum", robust=on)
    with pytest.raises(ConfigError, match="robust.sign.min_inputs 5 is more than clients_per_round 4"):
        CoordinatorConfig(clients_per_round=4, robust=on)
    assert CoordinatorConfig(clients_per_round=5, robust=on).robust.sign.enabled
    assert CoordinatorConfig(aggregator="krum", clients_per_round=2, robust=RobustConfig(sign=SignSplitConfig(
        min_inputs=5))).aggregator == "krum"  # off: nothing to refuse


# --- through the coordinator ------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _sign_fleet(model, tmp_path, metrics):
    """Ten manual devices under norm_bound with the sign split on (gap 4, every coordinate), all
    ten reports wanted a round."""
    fleet = make_fleet(model, tmp_path, clients_per_round=10, min_reports=10, aggregator="norm_bound",
                       metrics=metrics, robust=RobustConfig(sign=SignSplitConfig(gap=4.0, share=1.0)))
    devices = [ManualDevice(fleet, f"m{i}", 10) for i in range(10)]
    fleet.drain()
    return fleet, devices


def test_a_coordinator_leaves_out_two_flipped_of_ten_and_no_honest_update(model, tmp_path, caplog):
    """Round 1: ten honest non-IID-like updates, none left out, the plain mean committed (cold
    start: all under 2 x their median norm, equal claims). Round 2: the same with two flipped:
    those two are left out, logged, counted and tallied by device, and the mean of the eight
    others committed."""
    metrics = CoordinatorMetrics()
    fleet, devices = _sign_fleet(model, tmp_path, metrics)
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    d = sum(int(np.prod(s)) for s in shapes.values())
    rng = np.random.default_rng(11)
    for flipped in (0, 2):
        rows = 0.01 * non_iid_round(rng, d, 10, flipped=flipped)
        deltas = [dict(zip(shapes, np.split(r.astype(np.float32), np.cumsum([int(np.prod(s)) for s in
                                                                            shapes.values()])[:-1])))
                  for r in rows]
        deltas = [{k: v.reshape(shapes[k]) for k, v in delta.items()} for delta in deltas]
        before = {k: v.astype(np.float64) for k, v in c.state.params.items()}
        assert c.begin_round()
        fleet.drain()
        for device, delta in zip(devices, deltas):
            device.send(encode_message(device.update(delta)))
        fleet.drain()
        with caplog.at_level(logging.INFO, logger="fedge.coordinator"):
            record = c.tick()
        assert record.committed and record.reports == 10
        norms = [np.sqrt(sum(np.sum(np.square(v.astype(np.float64))) for v in delta.values())) for delta in deltas]
        assert max(norms) < 2 * np.median(norms)  # the premise: the clip does not bind
        for k, value in before.items():
            expect = value + np.mean([delta[k].astype(np.float64) for delta in deltas[flipped:]], axis=0)
            np.testing.assert_allclose(c.state.params[k], expect, rtol=1e-5, atol=1e-6)
        assert metrics.registry.get_sample_value("fedge_updates_sign_split_total") == flipped
    assert c.left_out.sign_split == {"m0": 1, "m1": 1} and not c.left_out.screened and not c.left_out.excluded
    assert any("the sign split" in r.getMessage() and "left 2 of 10" in r.getMessage() and "m0, m1" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_sharded_leader_notes_what_the_split_left_out():
    """A sharded round's SealedAggregator hands LeftOut.note the ids of the rule it wraps."""
    from types import SimpleNamespace

    from fedge.coordinator.left_out import LeftOut
    from fedge.coordinator.sharding.sealed import SealedAggregator

    metrics, left_out = CoordinatorMetrics(), LeftOut()
    inner = SimpleNamespace(sign_split_ids=["d1", "d7"], count=10, weight_cut=[])
    left_out.note(3, SealedAggregator(inner, None, 3, 2, {}, None), metrics)
    assert left_out.sign_split == {"d1": 1, "d7": 1}
    assert metrics.registry.get_sample_value("fedge_updates_sign_split_total") == 2
    assert SealedAggregator(SimpleNamespace(), None, 1, 2, {}, None).sign_split_ids == []


def test_a_round_whose_commit_failed_counts_what_it_left_out_once(model, tmp_path):
    """Sync rounds repeat Aggregate and Commit on every tick until the commit is written (rounds.py),
    so a commit the store refused once (a full disk) aggregated twice, and the left-out updates were
    logged, counted and tallied twice: fedge_updates_sign_split_total read 4 for 2 updates."""
    metrics = CoordinatorMetrics()
    fleet, devices = _sign_fleet(model, tmp_path, metrics)
    c = fleet.coordinator
    shapes = {k: v.shape for k, v in c.state.params.items()}
    sizes = [int(np.prod(s)) for s in shapes.values()]
    rows = 0.01 * non_iid_round(np.random.default_rng(11), sum(sizes), 10, flipped=2)
    tries = refuse_first_commit(c.store)
    assert c.begin_round()
    fleet.drain()
    for device, row in zip(devices, rows):
        parts = np.split(row.astype(np.float32), np.cumsum(sizes)[:-1])
        device.send(encode_message(device.update({k: p.reshape(s) for (k, s), p in zip(shapes.items(), parts)})))
    fleet.drain()
    with pytest.raises(OSError, match="no space"):
        c.tick()
    record = c.tick()
    assert record.committed and len(tries) == 2
    assert c.left_out.sign_split == {"m0": 1, "m1": 1}
    assert metrics.registry.get_sample_value("fedge_updates_sign_split_total") == 2
