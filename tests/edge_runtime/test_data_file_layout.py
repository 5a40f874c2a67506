"""The device's own data file (device_config.load_local_data, at start and at each SIGHUP
reload) is held to the layout rule `fedge simulate --data` applies (edge_runtime/examples.py):
each split is reshaped to the model's input, so an x_test laid out channels-last beside a
channels-first x_train fit alike and was evaluated as garbage, silently. And a test split
saved as np.array([]) is an empty split, as np.empty((0, d)) is."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.device_config import load_local_data
from fedge.edge_runtime.kernel.errors import DatasetError


def _npz(path, x_train, x_test, y_test=None):
    np.savez(path, x_train=x_train, y_train=np.arange(len(x_train)) % 2,
             x_test=x_test, y_test=np.arange(len(x_test)) % 2 if y_test is None else y_test)
    return path


def _signals(n, seed):
    """(n, 2 channels, 8 samples) float32."""
    return np.random.default_rng(seed).normal(size=(n, 2, 8)).astype(np.float32)


def test_an_x_test_laid_out_otherwise_than_x_train_is_refused_by_name(tmp_path):
    path = _npz(tmp_path / "data.npz", _signals(6, 0), _signals(3, 1).transpose(0, 2, 1))
    with pytest.raises(DatasetError, match=r"data.npz: x_test holds examples of shape \(8, 2\) but its x_train "
                                           r"holds \(2, 8\)"):
        load_local_data(path)


def test_layouts_that_hold_values_in_one_order_still_load(tmp_path):
    x = _signals(6, 0)
    for x_test in (x[:3], x[:3, :, None], x[:3].reshape(3, 16), np.zeros((0, 8, 2))):  # size-1 axes, flat, empty
        data = load_local_data(_npz(tmp_path / "data.npz", x, x_test))
        np.testing.assert_array_equal(data.x_test, x_test)  # kept as saved: check_input reshapes each split
        assert data.x_test.shape == x_test.shape
        np.testing.assert_array_equal(data.x_train, x)


@pytest.mark.parametrize("saved", [np.array([]), np.array([], np.int64)], ids=["float64", "int64"])
def test_a_test_split_saved_as_an_empty_1d_array_is_an_empty_split(tmp_path, saved):
    data = load_local_data(_npz(tmp_path / "data.npz", _signals(6, 0), saved, y_test=np.array([])))
    assert data.x_test.shape == (0, 2, 8) and data.y_test.shape == (0,)  # the shape of x_train's examples
    assert data.x_test.dtype == np.float32 and data.y_test.dtype == np.int64
    with pytest.raises(DatasetError, match=r"x_test has shape \(3,\); it must be \(examples, features"):
        load_local_data(_npz(tmp_path / "data.npz", _signals(6, 0), np.zeros(3), y_test=np.zeros(3)))
    with pytest.raises(DatasetError, match=r"x_train has shape \(0,\)"):  # a train split needs examples anyway
        load_local_data(_npz(tmp_path / "data.npz", np.array([]), np.zeros((0, 4)), y_test=np.array([])))


def test_a_device_refuses_examples_laid_out_otherwise_than_its_models_input(tmp_path):
    # A device alone cannot know its fleet's layout, but a model whose input has axes can: a
    # device's channels-last (n, 2, 2, 3) was reshaped to a (3, 2, 2) input as garbage, silently.
    import dataclasses

    from tests.tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "m")[2]  # 12 features
    model.manifest = dataclasses.replace(model.manifest, input_shape=(3, 2, 2))
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    with pytest.raises(DatasetError, match=r"data: examples of shape \(2, 2, 3\) are laid out otherwise than model "
                                           r".*'s input \(3, 2, 2\)"):
        model.check_input(x.transpose(0, 2, 3, 1))
    for fits in (x, x.reshape(2, 12), x[:, None]):  # its own layout, flat, a size-1 axis more
        np.testing.assert_array_equal(model.check_input(fits), x)
