"""The bounds of the 8-bit check (tools/intensities.eight_bit), each as the module docstring
states it, on folders built by hand: 'the largest value above 127' (a folder topping at exactly
127 is not 8-bit), 'at least half of the features that vary reach above 127' (exactly half is
8-bit; features topping at exactly 127 do not count), a 0/1 flag is '1 in at least FLAG_SHARE of
its examples' (exactly 1%) and takes 'only the values 0 and 1' (a constant 1 is no flag), and a
bool split makes a folder not 8-bit. A mutation audit (benchmarks/results/2026-12-06-mutation2)
moved each bound and no test noticed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fedge.tools.datasets import ClientData, FederatedDataset
from fedge.tools.intensities import FLAG_SHARE, HALF_OF_8_BIT, SHARED_SCALE, eight_bit


def _folder(*x_trains, test_dtype=np.float32):
    """One device per x_train (saved in its own dtype), each with a 2-example float32 test split
    of zeros; returns (data, saved dtypes) as eight_bit takes them."""
    clients = tuple(ClientData(f"d{i}", x, np.zeros(len(x), np.int64), np.zeros((2, x.shape[1]), test_dtype),
                               np.zeros(2, np.int64)) for i, x in enumerate(x_trains))
    saved = {c.client_id: {"train": c.x_train.dtype, "test": np.dtype(test_dtype)} for c in clients}
    return FederatedDataset("edges", clients, 2, (x_trains[0].shape[1],), None), saved


def _columns(*tops, n=10):
    """(n, len(tops)) float32: column j runs evenly from 0 to tops[j] (integers; the last row is tops)."""
    return np.stack([np.round(np.linspace(0, t, n)) for t in tops], axis=1).astype(np.float32)


def test_exactly_half_of_the_varying_features_above_127_is_8_bit_and_127_itself_is_not_above():
    assert (HALF_OF_8_BIT, SHARED_SCALE) == (127, 0.5)
    assert eight_bit(*_folder(_columns(255, 200, 127, 30))) == "float32"  # 2 of 4 above 127: at least half
    assert eight_bit(*_folder(_columns(255, 127, 127, 30))) is None  # 1 of 4: 127 is not above 127
    assert eight_bit(*_folder(_columns(255, 128, 127, 30))) == "float32"  # 128 is


def test_a_folder_topping_at_exactly_127_is_not_8_bit_even_when_no_feature_varies():
    assert eight_bit(*_folder(_columns(127, 127, 127))) is None
    assert eight_bit(*_folder(np.full((4, 3), 127, np.float32), test_dtype=np.uint8)) is None  # none varies


def test_a_folder_whose_features_are_all_constant_is_decided_without_numpy_warnings():
    """No feature varies (test splits saved as uint8 are skipped): the share of varying features
    above 127 was np.mean of nothing, NaN with two RuntimeWarnings on the user's stderr, and the
    answer came from comparing NaN. Every value 200, an integer in 0..255 above 127, is 8-bit
    (the share clause holds for no features); every value 100 is not (not above 127)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert eight_bit(*_folder(np.full((4, 3), 200, np.float32), test_dtype=np.uint8)) == "float32"
        assert eight_bit(*_folder(np.full((4, 3), 100, np.float32), test_dtype=np.uint8)) is None


@pytest.mark.parametrize("ones, is_flag", [(1, True), (0, False)])
def test_a_0_1_feature_is_a_flag_from_1_in_exactly_flag_share_of_the_examples(ones, is_flag):
    """100 examples (98 train + 2 test): a 0/1 column with one 1 is 1 in exactly 1% of them."""
    assert FLAG_SHARE == 0.01
    x = _columns(255, 200, 180, n=98)
    flag = np.zeros(98, np.float32)
    flag[:ones] = 1
    assert eight_bit(*_folder(np.column_stack([x, flag]))) == (None if is_flag else "float32")


def test_a_flag_1_in_5_percent_of_examples_is_a_flag():
    x = _columns(255, 200, 180, n=98)
    flag = (np.arange(98) % 20 == 0).astype(np.float32)  # 5 ones in 100 examples
    assert eight_bit(*_folder(np.column_stack([x, flag]))) is None


def test_a_feature_constant_at_1_is_not_a_flag():
    """A flag takes 0 and 1; a column of 1s (a bias saved beside the pixels) takes only 1."""
    x = _columns(255, 200, 180)
    assert eight_bit(*_folder(np.column_stack([x, np.ones(10, np.float32)]), test_dtype=np.uint8)) == "float32"


def test_a_bool_split_beside_float_pixels_makes_the_folder_not_8_bit():
    pixels, flags = _columns(255, 200, 180), (_columns(255, 200, 180) > 100)
    assert eight_bit(*_folder(pixels, pixels)) == "float32"
    assert eight_bit(*_folder(pixels, flags)) is None
