"""Which features per-device standardization takes for constant (edge_runtime/kernel/features.py):
only those whose spread is float rounding, a few float32 ulps of their scale."""

import numpy as np

from fedge.edge_runtime.kernel.features import as_features, feature_statistics, standardize


def test_a_feature_far_from_zero_with_a_real_spread_is_scaled_to_unit_std():
    # Timestamps within a quarter hour of 1e9 s: std ~900 is 9e-7 of the mean, 7.5 float32 ulps;
    # at the old threshold (1e-6) it was taken for constant, centred only, and reached the model
    # as values of +-900.
    rng = np.random.default_rng(0)
    x = as_features(np.stack([rng.normal(1e9, 900.0, 400), rng.normal(0.0, 1.0, 400)], axis=1))
    mean, std = feature_statistics(x)
    z = standardize(x, mean, std)
    oracle = x.astype(np.float64)[:, 0]
    assert abs(std[0] - oracle.std()) < 1e-9 * oracle.std()  # divided by its own std, not 1
    assert 0.99 < z[:, 0].std() < 1.01


def test_a_feature_that_varies_only_by_rounding_is_centred_not_scaled():
    # 0.1 + 0.2 beside 0.3, in float32: a spread of an ulp or so is rounding, not signal.
    base = np.float32(0.3)
    jitter = np.array([base, np.nextafter(base, np.float32(1)), np.nextafter(base, np.float32(0))] * 10, np.float32)
    x = np.stack([jitter, np.float32(1e6) + np.zeros(30, np.float32)], axis=1)
    mean, std = feature_statistics(x)
    assert std.tolist() == [1.0, 1.0]
    z = standardize(x, mean, std)
    assert np.abs(z).max() < 1e-6  # centred: the rounding stays rounding-sized
