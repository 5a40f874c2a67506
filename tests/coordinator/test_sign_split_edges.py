"""The gated sign split's boundaries and the corners of norm_bound's kept-rows path
(robust/sign_split.py, robust/screened.py) that the oracle tests beside them never reached: each
test pins one mutant the 2026-12-06 mutation audit planted and the tests missed
(benchmarks/results/2026-12-06-mutation3/). Oracles: numbers worked by hand, the loops of
test_sign_split.py, and norm_bound's own aggregators with the split off."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.limits import MAX_FLEET
from fedge.coordinator.robust import BadRobustParameter
from fedge.coordinator.robust.aggregators import RobustConfig, RobustState, _make
from fedge.coordinator.robust.norm_bound import NormBoundConfig, NormHistory
from fedge.coordinator.robust.sign_split import SignSplitConfig, separated, sign_features
from tests.coordinator.test_sign_split import non_iid_round, ref_columns, ref_features
from tests.coordinator.test_sign_split_rounds import ON, WARM, _params, _run, _vec

# 100 signs, 70% +: rows that are multiples of it have equal sign features (the split keeps them
# all) and norms that are multiples of 10 exactly (|SIGNS| = sqrt(100)).
SIGNS = np.where(np.random.default_rng(8).random(100) < 0.7, 1.0, -1.0)


def _plain(cfg, state, rows, claims):
    """norm_bound with the split off (make_aggregator's streaming or cold-start aggregator)."""
    agg = _make("norm_bound", cfg, state, np.random.default_rng(0))
    for i, (r, w) in enumerate(zip(rows, claims)):
        agg.add(_params(r), type("Meta", (), {"weight": w, "device_id": f"d{i}"})())
    return agg, _vec(agg.mean())


# --- sign_split.py ------------------------------------------------------------------------------


def test_centres_exactly_gap_x_spread_apart_are_not_separated_and_just_over_are():
    """The gate is "over gap x spread". Two clusters on one axis, {-1, 1} and {9, 11}: every point
    is 1 from its centre (spread 1) and the centres 0 and 10 are 10 apart, all exact."""
    feats = np.array([[-1.0, 0, 0], [1.0, 0, 0], [9.0, 0, 0], [11.0, 0, 0]])
    labels = np.array([0, 0, 1, 1])
    assert not separated(feats, labels, 10.0)
    assert separated(feats, labels, float(np.nextafter(10.0, 0.0)))


def test_a_model_smaller_than_one_over_share_counts_one_coordinate():
    """max(1, int(share x d)) columns: 5 coordinates at share 0.1 is one column, not none (no
    columns gave every feature 0 / 0 = NaN, with numpy's warnings)."""
    rows = np.random.default_rng(7).normal(size=(6, 5))
    assert len(ref_columns(3, 5, 0.1)) == 1  # the premise
    want = ref_features(rows, ref_columns(3, 5, 0.1))
    np.testing.assert_array_equal(sign_features(rows, np.random.default_rng(3), 0.1), np.array(want))


def test_min_inputs_up_to_max_fleet_is_accepted():
    assert SignSplitConfig(min_inputs=MAX_FLEET).min_inputs == MAX_FLEET
    with pytest.raises(BadRobustParameter):
        SignSplitConfig(min_inputs=MAX_FLEET + 1)


# --- screened.py: norm_bound's decisions over the kept rows --------------------------------------


@pytest.mark.parametrize("top, out", [(16.0, []), (17.0, ["d3"])], ids=["at_the_bound", "just_over"])
def test_a_norm_exactly_at_the_exclusion_bound_is_kept_as_norm_bound_keeps_it(top, out):
    """History median 40: exclusion 4 x 40 = 160. Row 3 is 16 x SIGNS, norm 160 exactly: kept
    (left out only over the bound); with one entry 17, norm 160.1: left out, by both paths."""
    rows = np.tile(4.0 * SIGNS, (6, 1))  # norm 40
    rows[3] = 16.0 * SIGNS
    rows[3, 0] = top * SIGNS[0]
    agg, _ = _run(RobustConfig(sign=ON), WARM, rows, [10.0] * 6)
    plain, _ = _plain(RobustConfig(), WARM, rows, [10.0] * 6)
    assert agg.excluded_ids == plain.excluded_ids == out and agg.sign_split_ids == []


def test_every_update_over_a_stale_exclusion_bound_is_clipped_in_not_a_crash():
    """History median 40 (bound 80, exclusion 160); every row 200-250 along SIGNS: all over the
    exclusion bound, so none is left out (as ClippedMean) and each is clipped to 80: the mean is
    8 x SIGNS."""
    rows = np.stack([(20.0 + i) * SIGNS for i in range(6)])
    agg, got = _run(RobustConfig(sign=ON), WARM, rows, [10.0] * 6)
    assert agg.excluded_ids == [] and agg.sign_split_ids == []
    np.testing.assert_allclose(got, 8.0 * SIGNS, rtol=1e-6)
    np.testing.assert_allclose(got, _plain(RobustConfig(), WARM, rows, [10.0] * 6)[1], rtol=1e-6)


def test_the_first_rounds_claim_allowance_is_over_the_median_claim():
    """Cold start, allowance up to 2.5. Norms 10, 10, 10, 60, 10: exclusion 4 x 10 = 40. Claims
    1, 1, 1, 2, 5: median 1 (mean 2), so the norm-60 update claiming 2 may be 2 x further out,
    to 80, and stays (clipped to 2 x 10); over the mean claim it would get 1 x and go."""
    cfg = RobustConfig(norm=NormBoundConfig(exclude_claim_allowance=2.5), sign=ON)
    rows = np.stack([m * SIGNS for m in (1.0, 1.0, 1.0, 6.0, 1.0)])
    claims = [1.0, 1.0, 1.0, 2.0, 5.0]
    agg, got = _run(cfg, RobustState(), rows, claims)
    plain, want = _plain(RobustConfig(norm=cfg.norm), RobustState(), rows, claims)
    assert agg.excluded_ids == plain.excluded_ids == []
    # weights capped at 1 x the median claim: all 1; row 3 clipped to 20 = 2 x SIGNS
    np.testing.assert_allclose(got, (1 + 1 + 1 + 2 + 1) / 5 * SIGNS, rtol=1e-6)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_a_history_of_zero_norms_gives_no_bound_and_the_round_sets_its_own():
    """A history whose median norm is 0 has bound 0: no bound (norm_bound then takes the round's
    own medians, as _make's cold start does), not a clip of everything to 0. Rows 1-5 x SIGNS:
    median 30, bound 60, nothing clipped; the mean is 3 x SIGNS."""
    state = RobustState(history=NormHistory((0.0,) * 5), claims=NormHistory((10.0,) * 5))
    rows = np.stack([m * SIGNS for m in (1.0, 2.0, 3.0, 4.0, 5.0)])
    agg, got = _run(RobustConfig(sign=ON), state, rows, [10.0] * 5)
    assert agg.task_clip == float("inf")
    np.testing.assert_allclose(got, 3.0 * SIGNS, rtol=1e-6)
    np.testing.assert_allclose(got, _plain(RobustConfig(), state, rows, [10.0] * 5)[1], rtol=1e-6)


def test_the_split_names_its_own_after_the_exclusion_left_one_out():
    """d0 is over the exclusion bound and goes first; the split then runs on d1-d9 and leaves out
    the two flipped, d1 and d2: the names are of the rows the split saw, not shifted by one."""
    rows = non_iid_round(np.random.default_rng(2), 100, 10, flipped=3) * 10
    rows[0] *= 100  # norm ~ 3,000, exclusion 160
    agg, _ = _run(RobustConfig(sign=ON), WARM, rows, [10.0] * 10)
    assert agg.excluded_ids == ["d0"] and agg.sign_split_ids == ["d1", "d2"]
