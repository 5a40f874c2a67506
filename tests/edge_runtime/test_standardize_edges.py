"""The edges of a device's per-feature standardization (edge_runtime/kernel/features.py) and of
its record (edge_runtime/standardization_record.py), each against a hand-computed value or a
plain loop: the uint8 reading x / 255, a constant feature with a negative mean, the inclusive
constant-feature bound, float32's range both ways, and a recorded std of 0. A mutation audit
(benchmarks/results/2026-12-06-mutation2) changed each of these and no test noticed."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.device_folder import STANDARDIZATION_FILE
from fedge.edge_runtime.kernel.errors import DatasetError, DeviceStateError
from fedge.edge_runtime.kernel.features import CONSTANT_FEATURE, as_features, feature_statistics, standardize
from fedge.edge_runtime.standardization_record import recorded_standardization

F32_MAX = float(np.finfo(np.float32).max)


def test_uint8_is_read_as_x_over_255():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16)
    expected = [[np.float32(int(v)) / np.float32(255) for v in row] for row in x]  # a plain loop, per value
    assert np.array_equal(as_features(x), np.array(expected, np.float32))
    assert as_features(x).dtype == np.float32 and as_features(x)[15, 15] == 1.0 and as_features(x)[0, 0] == 0.0


def test_a_constant_feature_with_a_negative_mean_is_only_centred_as_its_mirror_is():
    """A feature at -1e4 that moves by 1e-3 is constant on its scale, max(|mean|, 1) = 1e4
    (1e-3 <= 4.8e-7 * 1e4 = 4.8e-3), as the same feature at +1e4 is: std 1, not 1e-3."""
    x = np.array([[-1e4 - 1e-3, 5.0], [-1e4 + 1e-3, 7.0]])
    mean, std = feature_statistics(x)
    assert mean.tolist() == [-1e4, 6.0] and std.tolist() == [1.0, 1.0]
    mirror_mean, mirror_std = feature_statistics(-x)
    assert np.array_equal(mirror_mean, -mean) and np.array_equal(mirror_std, std)


def test_a_std_exactly_at_the_constant_bound_is_constant():
    """The bound is inclusive (std = 1 where std <= CONSTANT_FEATURE * max(|mean|, 1), four float32
    ulps, 2**-21): values -2**-21 and 2**-21 have mean 0 and std exactly 2**-21, as float64 computes it."""
    x = np.array([[-CONSTANT_FEATURE], [CONSTANT_FEATURE]])
    assert x.std(axis=0)[0] == CONSTANT_FEATURE * max(abs(x.mean()), 1.0)  # exactly on the bound
    assert feature_statistics(x)[1].tolist() == [1.0]
    assert feature_statistics(x * 2)[1].tolist() == [2 * CONSTANT_FEATURE]  # just past it, it divides


def test_float32s_largest_value_fits_and_a_value_beyond_it_either_way_is_refused():
    one, zero = np.ones(1), np.zeros(1)
    assert standardize(np.array([[F32_MAX], [-F32_MAX]]), zero, one).tolist() == [[F32_MAX], [-F32_MAX]]
    for sign in (1, -1):  # 1e35 on a feature of std 1e-5 is 1e40 standardized, inf as float32
        with pytest.raises(DatasetError, match=r"d\.npz x_test: example 1, feature 0: .*beyond float32"):
            standardize(np.array([[0.0], [sign * 1e35]]), zero, one * 1e-5, "d.npz x_test")


@pytest.mark.parametrize("mean, std", [
    (np.zeros(3), np.array([1.0, 0.0, 2.0])),  # a std of 0 would divide the exported inputs by zero
    (np.zeros(3), np.ones(4)),  # shapes differ: no per-feature pairing
    (np.array([0.0, np.nan, 1.0]), np.ones(3)),  # a NaN mean would make every exported input NaN
])
def test_a_record_fedge_would_not_write_is_refused_by_name(tmp_path, mean, std):
    np.savez(tmp_path / STANDARDIZATION_FILE, mean=mean, std=std)
    with pytest.raises(DeviceStateError, match="not a standardization fedge recorded"):
        recorded_standardization(tmp_path)
    np.savez(tmp_path / STANDARDIZATION_FILE, mean=np.zeros(std.shape), std=np.full(std.shape, 0.5))  # a good one reads
    assert recorded_standardization(tmp_path)[1].tolist() == [0.5] * std.size
