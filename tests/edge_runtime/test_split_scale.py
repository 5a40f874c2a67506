"""A data file whose x_test is on another scale than its x_train (one split divided by 255 and
not the other; x_train standardized, x_test raw) loaded without a word, and a device scored a
model on inputs hundreds of times off its training scale. edge_runtime/split_scale.py compares
the splits' root mean squares; the device's loader warns in one line at load and reload."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn.datasets import load_wine

from fedge.edge_runtime.device_config import read_local_data
from fedge.edge_runtime.split_scale import RATIO_LIMIT, rms, scale_gap


def _rms_loop(x):
    """The root mean square as a plain loop, in Python floats."""
    values = [float(v) for v in np.asarray(x).ravel()]
    return math.sqrt(sum(v * v for v in values) / len(values))


def _wine(seed=0):
    """Wine's first 40 shuffled rows as train, the next 10 as test (raw), float32."""
    x, _ = load_wine(return_X_y=True)
    x = np.random.default_rng(seed).permutation(x.astype(np.float32))
    return x[:40], x[40:50]


def _standardized(x_train, x):
    return ((x - x_train.mean(0)) / x_train.std(0)).astype(np.float32)


def test_rms_is_the_plain_root_mean_square():
    x = np.random.default_rng(0).normal(3.0, 2.0, (7, 5)).astype(np.float32)
    assert rms(x) == pytest.approx(_rms_loop(x), rel=1e-12)
    assert rms(np.full((2, 3), 1e30, np.float32)) == pytest.approx(1e30, rel=1e-6)  # float32 squares overflow


@pytest.mark.parametrize("mistake", ["x_test * 255", "x_test / 255 beside 0..255", "raw beside standardized"])
def test_each_scale_mistake_is_reported_with_both_scales(mistake):
    x_train, x_test = _wine()
    if mistake == "x_test * 255":
        x_train, x_test = _standardized(x_train, x_train), _standardized(x_train, x_test) * 255
    elif mistake == "x_test / 255 beside 0..255":
        x_train, x_test = x_train / x_train.max() * 255, x_test / x_train.max()
    else:
        x_train = _standardized(x_train, x_train)
    gap = scale_gap(x_train, x_test)
    assert gap is not None
    assert (gap.train_rms, gap.test_rms) == (pytest.approx(_rms_loop(x_train), rel=1e-6),
                                            pytest.approx(_rms_loop(x_test), rel=1e-6))
    assert not 1 / RATIO_LIMIT <= _rms_loop(x_test) / _rms_loop(x_train) <= RATIO_LIMIT  # the oracle agrees


def test_honest_splits_are_not_reported():
    x_train, x_test = _wine()
    for train, test in ((x_train, x_test),  # raw
                        (_standardized(x_train, x_train), _standardized(x_train, x_test)),
                        (x_train[:1], x_test),  # one training example
                        (x_train, x_test[:0]),  # an empty test split: no scale to compare
                        (np.zeros_like(x_train), x_test)):  # all-zero training features: no scale either
        assert scale_gap(train, test) is None


def test_a_device_warns_in_one_line_naming_its_file_and_both_scales(tmp_path, caplog):
    x_train, x_test = _wine()
    honest, off = tmp_path / "honest.npz", tmp_path / "off.npz"
    np.savez(honest, x_train=x_train, y_train=np.zeros(40, int), x_test=x_test, y_test=np.zeros(10, int))
    # a uint8 x_train is read as x / 255; the same pixels saved as float32 0..255 are read as saved
    pixels = np.random.default_rng(1).integers(0, 256, (12, 16))
    np.savez(off, x_train=pixels[:8].astype(np.uint8), y_train=np.zeros(8, int),
             x_test=pixels[8:].astype(np.float32), y_test=np.zeros(4, int))
    with caplog.at_level(logging.WARNING, logger="fedge.device"):
        read_local_data(honest)
        assert not caplog.messages
        for standardize in (False, True):  # standardizing both with x_train's statistics keeps the gap
            read_local_data(off, standardize)
    lines = [m for m in caplog.messages if "another scale" in m]
    assert len(lines) == 2 and all(m.startswith(f"{off}: ") for m in lines)
    train, test = _rms_loop(pixels[:8] / 255), _rms_loop(pixels[8:])
    assert f"{test:.4g} against {train:.4g}" in lines[0]


def test_a_ratio_of_exactly_the_limit_either_way_is_not_reported_and_just_beyond_is():
    """'Beyond RATIO_LIMIT either way': 16 and 1 / 16 are within (powers of two: the RMS of a
    constant split is exact), 16 (1 + 2^-20) and its inverse beyond; 12 and 1 / 12, near the
    honest extreme 4.43's threefold, are within a limit of 16."""
    ones = np.ones((4, 3))
    assert RATIO_LIMIT == 16
    for ratio in (16.0, 1 / 16, 12.0, 1 / 12):
        assert scale_gap(ones, ones * ratio) is None, ratio
    for ratio in (16.0 * (1 + 2 ** -20), 1 / (16.0 * (1 + 2 ** -20)), 20.0, 1 / 20):
        gap = scale_gap(ones, ones * ratio)
        assert gap is not None and gap.ratio == pytest.approx(ratio, rel=1e-12), ratio


def test_a_split_with_an_infinite_value_has_no_scale_to_compare():
    """An inf makes a split's RMS inf and the ratio 0 or inf: no scale, as for all-zero splits
    (the loaders refuse non-finite values before they compare: examples.check_split)."""
    x_train, x_test = _wine()
    broken = x_train.copy()
    broken[3, 2] = np.inf
    assert math.isinf(rms(broken))
    assert scale_gap(broken, x_test) is None and scale_gap(x_train, broken) is None
