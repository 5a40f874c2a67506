"""Fleet statistics from per-device Moments (kernel/features.py): combine_moments over any split
of a fleet's training examples gives what feature_statistics gives on their concatenation, the
oracle being numpy's own mean and std of the whole."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.edge_runtime.kernel.features import Moments, combine_moments, feature_moments, feature_statistics


def _fleet(rng, n=600):
    x = np.empty((n, 2, 3), np.float32)
    x[:, 0, 0] = rng.normal(1e3, 1e-3, n)  # E[x^2] - mean^2 keeps none of this variance in float64
    x[:, 0, 1] = rng.normal(-5.0, 3.0, n)
    x[:, 0, 2] = 7.0  # constant: only centred, std 1 (the constant-feature rule)
    x[:, 1, 0] = rng.normal(2e4, 1e4, n)
    x[:, 1, 1] = rng.uniform(0, 1, n)
    x[:, 1, 2] = rng.normal(1e9, 900.0, n)  # timestamps within a quarter hour
    return x


@pytest.mark.parametrize("seed", range(5))
def test_combined_moments_are_the_statistics_of_the_concatenation(seed):
    rng = np.random.default_rng(seed)
    x = _fleet(rng)
    cuts = np.sort(rng.choice(np.arange(1, len(x)), size=rng.integers(1, 9), replace=False))
    parts = np.split(x[rng.permutation(len(x))], cuts)
    mean, std = combine_moments(feature_moments(p) for p in parts)
    whole = np.concatenate(parts).astype(np.float64)
    want_mean, want_std = whole.mean(axis=0), whole.std(axis=0)
    want_std[0, 2] = 1.0  # the constant feature
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(std, want_std, rtol=1e-12)
    ref_mean, ref_std = feature_statistics(np.concatenate(parts))
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(std, ref_std, rtol=1e-12)
    assert std[0, 0] == pytest.approx(1e-3 * float(whole[:, 0, 0].std() / 1e-3), rel=1e-12) and std[0, 0] < 2e-3


def test_feature_moments_oracle():
    x = np.arange(12, dtype=np.uint8).reshape(4, 3)
    m = feature_moments(x.astype(np.float32) / 255)
    flat = x.astype(np.float32).astype(np.float64) / 255
    assert m.count == 4 and m.mean.dtype == np.float64 and m.mean.shape == (3,)
    for j in range(3):
        column = [float(np.float32(v) / np.float32(255)) for v in x[:, j]]
        mu = sum(column) / 4
        assert m.mean[j] == pytest.approx(mu, rel=1e-7)
        assert m.m2[j] == pytest.approx(sum((c - mu) ** 2 for c in column), rel=1e-6)
    np.testing.assert_allclose(m.mean, flat.mean(axis=0), rtol=1e-6)


def _ok(count=3, shape=(2,)):
    return Moments(count, np.zeros(shape), np.ones(shape), np.zeros(shape))


@pytest.mark.parametrize("moments, match", [
    ([], "no moments to combine"),
    ([_ok(), _ok(0)], "moments 2 of 2: count 0 is not a positive"),
    ([_ok(-1)], "count -1"),
    ([_ok(True)], "count True"),
    ([_ok(2.5)], "count 2.5"),
    ([_ok(), _ok(shape=(3,))], r"moments 2 of 2: features of shape \(3,\), where moments 1 of 2 has \(2,\)"),
    ([Moments(3, np.zeros(2), np.ones(3), np.zeros(2))], r"mean, m2 and mean_residual of shapes \[\(2,\), \(3,\)"),
    ([Moments(3, np.array([0.0, np.nan]), np.ones(2), np.zeros(2))], "not finite"),
    ([Moments(3, np.zeros(2), np.array([1.0, np.inf]), np.zeros(2))], "not finite"),
    ([Moments(3, np.zeros(2), np.ones(2), np.array([np.nan, 0.0]))], "not finite"),
    ([Moments(3, np.zeros(2), np.array([1.0, -1.0]), np.zeros(2))], "below 0"),
])
def test_bad_moments_are_refused_by_name(moments, match):
    with pytest.raises(DatasetError, match=match):
        combine_moments(moments)


def test_names_label_the_refused_entry():
    with pytest.raises(DatasetError, match="b.npz: count 0"):
        combine_moments([_ok(), _ok(0)], names=["a.npz", "b.npz"])


def test_constant_features_of_any_value_combine_to_a_centring_only():
    """Pooled, a constant feature divides by 1 (the constant-feature rule), as feature_statistics
    does: without it the pooled std of 0 (or a rounding residue) would divide. (feature_moments'
    clamp of m2 at 0 is a safeguard no input is known to reach: this test passes without it.)"""
    values = (0.1, 1 / 3, 7.7, 123.456, 1e3 + 1e-4, 1e9 + 3)
    parts = [np.tile(np.array(values, np.float32), (n, 1)) for n in (1, 3, 7, 49, 199)]
    mean, std = combine_moments(feature_moments(p) for p in parts)
    assert std.tolist() == [1.0] * len(values)
    np.testing.assert_allclose(mean, np.array(values, np.float32).astype(np.float64), rtol=1e-15)
