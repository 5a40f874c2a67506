"""Attacks at their documented edges (tools/simulate/attacks.py): ALIE's last possible m, a unit
direction of a zero mean, the collusion's previous round, triggers that fill the input or sit at
index 0 or on flat features, and a backdoor share that rounds to no sample."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm as scipy_norm

from fedge.tools.simulate.attacks import (
    AttackError,
    Collusion,
    Trigger,
    alie_z_max,
    backdoor_data,
    corner_trigger,
    perturbation,
)


@pytest.mark.parametrize("n", [4, 10, 11, 50])
def test_alie_takes_every_m_up_to_where_no_supporter_is_needed_and_refuses_from_there(n):
    """Baruch et al.: s = floor(n / 2 + 1) - m; z_max exists while 0 < (n - s) / n < 1, i.e. s >= 1.
    The last m is floor(n / 2); at m = floor(n / 2) + 1, s = 0 and Phi(z) < 1 holds for every z."""
    last = n // 2
    s = n // 2 + 1 - last
    assert s == 1 and alie_z_max(n, last) == pytest.approx(scipy_norm.ppf((n - 1) / n), abs=1e-9)
    with pytest.raises(AttackError, match="ALIE needs"):
        alie_z_max(n, last + 1)


def test_the_unit_direction_of_a_zero_mean_is_zero_not_nan():
    x = np.array([[1.0, -2.0, 0.5], [-1.0, 2.0, -0.5]])  # the mean is exactly 0
    np.testing.assert_array_equal(perturbation(x, "unit"), np.zeros(3))


def test_the_collusion_keeps_the_previous_round_for_its_late_updates():
    """A straggler of round 4 is rewritten after round 5's first deposit (conspiracy.release):
    round 4 must still be known then; round 6 drops it."""
    c = Collusion()
    c.deposit(4, "a", np.ones(2), attacker=True)
    c.deposit(5, "b", np.full(2, 2.0), attacker=True)
    np.testing.assert_array_equal(c.known(4), [np.ones(2)])
    c.deposit(6, "a", np.zeros(2), attacker=True)
    with pytest.raises(AttackError, match="round 4"):
        c.known(4)
    np.testing.assert_array_equal(c.known(5), [np.full(2, 2.0)])


def test_a_trigger_may_stamp_feature_0():
    stamped = Trigger((0,), 9.0, 1).stamp(np.zeros((2, 3)))
    np.testing.assert_array_equal(stamped, [[9.0, 0.0, 0.0], [9.0, 0.0, 0.0]])
    with pytest.raises(AttackError):
        Trigger((-1,), 9.0, 1)


def test_a_corner_trigger_may_fill_the_whole_image_but_not_more():
    assert corner_trigger((3, 3), 0, size=3).indices == tuple(range(9))
    with pytest.raises(AttackError, match="does not fit"):
        corner_trigger((3, 3), 0, size=4)


def test_a_trigger_on_flat_features_is_the_last_side_times_side_of_them():
    assert corner_trigger((10,), 1, size=2).indices == (6, 7, 8, 9)
    assert corner_trigger((9,), 1, size=3).indices == tuple(range(9))
    with pytest.raises(AttackError, match="does not fit"):
        corner_trigger((8,), 1, size=3)


def test_a_backdoor_share_that_rounds_to_nothing_still_stamps_one_sample():
    x, y = np.zeros((10, 4)), np.zeros(10, np.int64)
    bx, by = backdoor_data(x, y, Trigger((3,), 1.0, 7), 0.01, np.random.default_rng(0))
    assert int((by == 7).sum()) == 1 and int((bx[:, 3] == 1.0).sum()) == 1
