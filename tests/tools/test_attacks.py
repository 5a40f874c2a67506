"""Attacks against the papers' formulas; the gamma search against closed-form solutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm as scipy_norm

from fedge.edge_runtime.kernel.errors import NonFiniteValues
from fedge.edge_runtime.kernel.update_codec import decode_tensors
from fedge.tools.simulate.attacks import (
    AttackError,
    Collusion,
    Trigger,
    alie,
    alie_z_max,
    backdoor_data,
    backdoor_success,
    corner_trigger,
    gamma_search,
    gaussian,
    huge_weight,
    ipm,
    label_flip,
    min_max,
    min_sum,
    nan_frame,
    nan_update,
    perturbation,
    scale_replace,
    sign_flip,
)


def honest(seed, k=6, d=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=d) * 0.5 + rng.normal(size=(k, d)) * 0.2


def test_single_update_attacks():
    delta = np.array([1.0, -2.0, 0.5])
    np.testing.assert_array_equal(sign_flip(delta), [-1.0, 2.0, -0.5])
    np.testing.assert_array_equal(sign_flip(delta, 3.0), [-3.0, 6.0, -1.5])
    # Bagdasaryan eq. 3: X~ = (n / eta)(X - G) + G, so the delta scales by n / eta.
    np.testing.assert_allclose(scale_replace(delta, 10, 0.5), delta * 20.0)
    assert np.all(np.isnan(nan_update(delta))) and nan_update(delta).shape == (3,)
    assert huge_weight(32, 1e6) == 32e6
    with pytest.raises(AttackError):
        scale_replace(delta, 0, 1.0)


def test_gaussian_ignores_the_delta_and_has_the_asked_spread():
    g = gaussian(np.zeros(200_000), 0.3, np.random.default_rng(0))
    assert abs(g.mean()) < 0.005 and abs(g.std() - 0.3) < 0.005
    np.testing.assert_array_equal(g, gaussian(np.ones(200_000), 0.3, np.random.default_rng(0)))


@pytest.mark.parametrize("n,m", [(10, 2), (20, 4), (50, 12), (50, 24), (5, 1), (100, 20)])
def test_alie_z_max_matches_the_paper(n, m):
    s = math.floor(n / 2 + 1) - m
    expect = scipy_norm.ppf((n - s) / n)  # max z with Phi(z) < (n - s) / n
    assert alie_z_max(n, m) == pytest.approx(expect, abs=1e-9)
    assert scipy_norm.cdf(alie_z_max(n, m) - 1e-6) < (n - s) / n


def test_alie_per_coordinate_loop():
    x = honest(1)
    n, m = 20, 4
    z = scipy_norm.ppf((n - (math.floor(n / 2 + 1) - m)) / n)
    expect = []
    for j in range(x.shape[1]):
        col = [float(v) for v in x[:, j]]
        mu = sum(col) / len(col)
        sd = math.sqrt(sum((v - mu) ** 2 for v in col) / len(col))
        expect.append(mu - z * sd)
    np.testing.assert_allclose(alie(x, n, m), expect, atol=1e-12)


@pytest.mark.parametrize("n,m", [(10, 0), (10, 6), (10, 10), (1, 1)])
def test_alie_refuses_impossible_settings(n, m):
    with pytest.raises(AttackError):
        alie_z_max(n, m)


def test_ipm_is_minus_epsilon_times_the_mean():
    x = honest(2)
    for eps in (0.1, 0.5, 100.0):
        np.testing.assert_allclose(ipm(x, eps), [-eps * sum(x[:, j]) / len(x) for j in range(x.shape[1])])
    with pytest.raises(AttackError):
        ipm(np.zeros((0, 3)), 0.1)


def test_perturbation_directions():
    x = honest(3)
    mu = x.mean(axis=0)
    np.testing.assert_allclose(perturbation(x, "unit"), -mu / np.linalg.norm(mu))
    np.testing.assert_allclose(perturbation(x, "std"), -x.std(axis=0))
    np.testing.assert_array_equal(perturbation(x, "sign"), -np.sign(mu))
    with pytest.raises(AttackError):
        perturbation(x, "up")


def closed_form_min_max(x, p):
    """Largest gamma >= 0 with max_i ||mu + gamma p - x_i||^2 <= R^2: the smallest positive root per i."""
    mu = x.mean(axis=0)
    r2 = max(float(np.sum((a - b) ** 2)) for a in x for b in x)
    pp = float(p @ p)
    roots = []
    for xi in x:
        a = mu - xi
        ap = float(a @ p)
        roots.append((-ap + math.sqrt(ap * ap - pp * (float(a @ a) - r2))) / pp)
    return min(roots)


def closed_form_min_sum(x, p):
    """sum_i ||a_i + gamma p||^2 = sum ||a_i||^2 + k gamma^2 ||p||^2, since sum_i a_i = 0."""
    mu = x.mean(axis=0)
    limit = max(sum(float(np.sum((a - b) ** 2)) for b in x) for a in x)
    base = sum(float(np.sum((mu - xi) ** 2)) for xi in x)
    return math.sqrt((limit - base) / (len(x) * float(p @ p)))


@pytest.mark.parametrize("kind", ["unit", "std", "sign"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_max_and_min_sum_gamma_match_closed_form(kind, seed):
    x = honest(seed, k=8, d=6)
    p = perturbation(x, kind)
    for attack, oracle in ((min_max, closed_form_min_max), (min_sum, closed_form_min_sum)):
        mal, g = attack(x, kind, gamma_init=20.0, tol=1e-9)
        expect = oracle(x, p)
        assert expect < 40.0  # inside the search's reach (2 * gamma_init)
        assert g == pytest.approx(expect, abs=1e-6)
        np.testing.assert_allclose(mal, x.mean(axis=0) + g * p)


def test_min_max_stays_inside_the_honest_spread():
    x = honest(4, k=10, d=8)
    mal, g = min_max(x, "unit")
    spread = max(np.linalg.norm(a - b) for a in x for b in x)
    assert g > 0 and max(np.linalg.norm(mal - xi) for xi in x) <= spread + 1e-9


def test_gamma_search_caps_at_twice_the_start():
    assert gamma_search(lambda g: True, 10.0, 1e-6) == pytest.approx(20.0, abs=1e-5)
    assert gamma_search(lambda g: False, 10.0, 1e-6) == 0.0
    assert gamma_search(lambda g: g <= 3.3, 10.0, 1e-7) == pytest.approx(3.3, abs=1e-6)


def test_collusion_keeps_honest_deltas_only_when_omniscient():
    blind = Collusion(omniscient=False)
    blind.deposit(1, "a", np.ones(3), attacker=True)
    blind.deposit(1, "h", np.full(3, 9.0), attacker=False)
    np.testing.assert_array_equal(blind.known(1), [np.ones(3)])
    assert blind.attackers(1) == 1
    seer = Collusion(omniscient=True)
    seer.deposit(1, "a", np.ones(3), attacker=True)
    seer.deposit(1, "h", np.full(3, 9.0), attacker=False)
    assert seer.known(1).shape == (2, 3) and seer.attackers(1) == 1
    with pytest.raises(AttackError):
        blind.known(2)
    blind.deposit(5, "a", np.ones(3), attacker=True)
    with pytest.raises(AttackError):
        blind.known(1)  # older rounds are dropped


def test_label_flip():
    y = np.array([0, 1, 2, 9, 5])
    np.testing.assert_array_equal(label_flip(y, 10), [9, 8, 7, 0, 4])
    perm = [1, 0, 2, 3, 4, 5, 6, 7, 8, 9]
    np.testing.assert_array_equal(label_flip(y, 10, perm), [1, 0, 2, 9, 5])
    with pytest.raises(AttackError):
        label_flip(y, 10, [0] * 10)


def test_backdoor_data_stamps_and_relabels_a_fraction():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 0.5, size=(40, 8, 8))
    y = rng.integers(0, 10, size=40)
    trig = corner_trigger((8, 8), target=7, size=2)
    assert trig.indices == (54, 55, 62, 63)
    bx, by = backdoor_data(x, y, trig, 0.25, np.random.default_rng(1))
    stamped = np.all(bx.reshape(40, -1)[:, list(trig.indices)] == 1.0, axis=1)
    assert stamped.sum() == 10 and np.all(by[stamped] == 7)
    np.testing.assert_array_equal(bx[~stamped], x[~stamped])
    np.testing.assert_array_equal(by[~stamped], y[~stamped])
    assert not np.shares_memory(bx, x)
    with pytest.raises(AttackError):
        backdoor_data(x, y, trig, 0.0, rng)
    with pytest.raises(AttackError):
        Trigger((), 1.0, 0)


def test_backdoor_success_counts_only_non_target_samples():
    y = np.array([7, 1, 2, 3, 7])
    pred = np.array([7, 7, 2, 7, 1])
    assert backdoor_success(pred, y, 7) == pytest.approx(2 / 3)
    assert backdoor_success(pred, np.full(5, 7), 7) == 0.0


def test_nan_frame_is_well_formed_and_all_nan():
    shapes = {"w": (3, 4), "b": (4,)}
    frame = nan_frame(shapes)
    assert frame.count(np.float32(np.nan).tobytes()) == 16  # every value, nothing else
    with pytest.raises(NonFiniteValues):  # framing and CRC pass; only finiteness fails
        decode_tensors(frame, expected=shapes)
