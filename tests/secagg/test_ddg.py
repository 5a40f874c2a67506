"""The distributed discrete Gaussian's device half (edge_runtime/kernel/secagg/ddg.py) against
oracles: the sampler against the pmf computed directly, the rounding's norm bound, the noise in
an exact modular sum against the sum of the noiseless rounded vectors, and no wrap at the field
coordinator/dp/distributed.py sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedge.coordinator.dp.distributed import params_for
from fedge.edge_runtime.kernel.secagg import ddg, quantize


def _pmf(sigma: float, support: int) -> tuple[np.ndarray, np.ndarray]:
    """N_Z(0, sigma^2) on [-support, support], normalized by direct summation."""
    ys = np.arange(-support, support + 1)
    w = np.exp(-ys.astype(np.float64) ** 2 / (2 * sigma ** 2))
    return ys, w / w.sum()


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.5, 7.0, 40.0])
def test_the_sampler_matches_the_pmf_chi_square_and_moments(sigma):
    n = 200_000
    draws = ddg.discrete_gaussian(sigma, n, np.random.default_rng(int(sigma * 100)))
    assert draws.dtype == np.int64 and draws.size == n
    ys, p = _pmf(sigma, int(12 * sigma) + 12)
    # bins of at least 5 expected counts; the tails pooled into the end bins
    expected, observed = p * n, np.array([np.sum(draws == y) for y in ys], dtype=np.float64)
    keep = expected >= 5
    lo, hi = np.argmax(keep), len(keep) - np.argmax(keep[::-1])
    exp_b = np.concatenate([[expected[:lo + 1].sum()], expected[lo + 1:hi - 1], [expected[hi - 1:].sum()]])
    obs_b = np.concatenate([[observed[:lo + 1].sum()], observed[lo + 1:hi - 1], [observed[hi - 1:].sum()]])
    chi2 = float(np.sum((obs_b - exp_b) ** 2 / exp_b))
    dof = len(exp_b) - 1
    # the 1 - 1e-6 quantile of chi-square(dof), Wilson-Hilferty: a correct sampler fails 1 in 10^6
    z = 4.753
    limit = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < limit, (chi2, limit, dof)
    var = float(np.sum(p * ys.astype(np.float64) ** 2))
    assert abs(draws.mean()) < 5 * math.sqrt(var / n)
    assert draws.var() == pytest.approx(var, rel=5 * math.sqrt(2 / n) + 1e-3)


def test_a_wrong_sampler_fails_the_chi_square():
    """The check above can fail: a rounded continuous Gaussian of the same sigma is rejected."""
    sigma, n = 0.6, 200_000
    draws = np.rint(np.random.default_rng(1).normal(0, sigma, n)).astype(np.int64)
    ys, p = _pmf(sigma, 20)
    keep = p * n >= 5
    chi2 = float(np.sum(((np.array([np.sum(draws == y) for y in ys]) - p * n) ** 2 / (p * n))[keep]))
    assert chi2 > 100


@pytest.mark.parametrize("seed", range(20))
def test_conditional_rounding_is_within_the_inflated_bound_and_unbiased(seed):
    rng = np.random.default_rng(seed)
    d, a = 257, 30.0
    x = rng.normal(size=d)
    x *= a / np.linalg.norm(x)
    bound = ddg.rounded_bound(a, d)
    r = ddg.conditional_round(x, bound, rng)
    assert float(np.linalg.norm(r)) <= bound
    assert np.all(np.abs(r - x) < 1)


def test_the_rounded_bound_is_the_papers_formula():
    a, d, beta = 100.0, 1000, math.exp(-0.5)
    plain = math.sqrt(a ** 2 + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (a + math.sqrt(d) / 2))
    assert ddg.rounded_bound(a, d, beta) == pytest.approx(min(plain, a + math.sqrt(d)), rel=1e-12)


def _encode_cohort(n, d, seed, sigma, gamma, m, clip_range=0.5, clip_norm=1.0):
    rng = np.random.default_rng(seed)
    values, rounded = [], []
    for _ in range(n):
        x = rng.normal(size=d)
        x *= clip_norm * rng.uniform(0.5, 1.5) / np.linalg.norm(x)  # some above S: the device clips them
        v, r = ddg.encode(x, 7, clip_norm, clip_range, gamma, sigma, m, rng)
        values.append(v)
        rounded.append(r)
    return np.stack(values), np.stack(rounded)


def test_the_unmasked_sum_minus_the_noiseless_sum_has_n_sigma_squared_variance():
    n, d, sigma, m = 20, 2048, 6.0, 20
    values, rounded = _encode_cohort(n, d, 3, sigma, 0.01, m)
    total = np.sum(values.astype(np.int64), axis=0) % (1 << m)  # what unmasking returns, bit for bit
    noise = ddg.signed(total, m) - rounded.sum(axis=0)
    ys, p = _pmf(sigma, 200)
    var = float(np.sum(p * ys.astype(np.float64) ** 2))  # one device's share, from the pmf directly
    assert noise.var() == pytest.approx(n * var, rel=5 * math.sqrt(2 / d))
    assert abs(noise.mean()) < 5 * math.sqrt(n * var / d)


def test_every_device_clips_to_s_and_the_decoded_sum_is_the_clipped_sum_plus_noise():
    d, gamma = 512, 1e-3
    values, rounded = _encode_cohort(1, d, 5, 0.0, gamma, 24, clip_range=1.0)
    assert float(np.linalg.norm(rounded[0] * gamma)) <= ddg.rounded_bound(1.0 / gamma, d) * gamma
    decoded = ddg.decode(values.sum(axis=0) % (1 << 24), 7, gamma, 24)
    np.testing.assert_allclose(decoded, quantize.unrotate(rounded[0] * gamma, 7), atol=1e-9)


@pytest.mark.parametrize("seed", range(30))
def test_no_wrap_at_the_sized_field(seed):
    """The worst signal the L-inf clip allows (every device at +c on every coordinate) plus the
    noise, at the gamma and sigma params_for picks for m = 12: the signed sum is exact."""
    n, d, m, clip_norm = 12, 64, 12, 1.0
    c = clip_norm / math.sqrt(d)  # a vector of all +c has norm S: the clip keeps it
    p = params_for(1.0, clip_norm, c, d, 8, n, m)
    assert p.wrap_log2 <= -40
    rng = np.random.default_rng(seed)
    # every device's rotated vector at +c: build x whose rotation is that (unrotate is the inverse)
    x = quantize.unrotate(np.full(d, c), 11)
    rounded = [ddg.encode(x, 11, clip_norm, c, p.gamma, p.sigma, m, rng) for _ in range(n)]
    total = np.sum([v.astype(np.int64) for v, _ in rounded], axis=0) % (1 << m)
    plain_noised = sum(r for _, r in rounded)  # noiseless part...
    noise = ddg.signed(total, m) - plain_noised
    assert np.all(np.abs(noise) < 12 * p.sigma * math.sqrt(n))  # ...so the rest is the noise, unwrapped
    assert plain_noised.max() > 0.8 * n * c / p.gamma


def test_a_field_too_small_for_the_noise_is_refused():
    with pytest.raises(ValueError, match="cannot hold"):
        params_for(1.0, 1.0, 0.1, 10_000, 50, 1000, 4)


@pytest.mark.parametrize("m", [2, 12, 16, 31])
def test_the_field_sum_reads_as_a_signed_integer_in_the_half_open_range(m):
    """Two's complement by hand: t below 2^(m-1) is itself, t at or above it is t - 2^m, so the
    range is [-2^(m-1), 2^(m-1)) and its edge 2^(m-1) reads as the most negative value."""
    half, full = 1 << (m - 1), 1 << m
    field = np.array([0, 1, half - 1, half, half + 1, full - 1], dtype=np.int64)
    expected = [int(t) if t < half else int(t) - full for t in field]
    assert ddg.signed(field, m).tolist() == expected
    assert ddg.signed(np.array([half]), m)[0] == -half
