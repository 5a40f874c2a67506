"""`fedge simulate --data` refuses a folder whose examples flatten to one width in different
layouts (edge_runtime/examples.LayoutCheck, which the device's own reader uses too): one client
of five saved its 2-channel signals channels-last and the run trained on, silently, to 0.83
where the same digits laid out alike reached 0.93."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import load_npz_dir


def _save(path, x_train, x_test, seed=0):
    rng = np.random.default_rng(seed)
    np.savez(path, x_train=x_train, y_train=rng.integers(0, 3, len(x_train)),
             x_test=x_test, y_test=rng.integers(0, 3, len(x_test)))


def _signals(n, seed):
    """(n, 2 channels, 32 samples) float32."""
    return np.random.default_rng(seed).normal(size=(n, 2, 32)).astype(np.float32)


def test_a_client_laid_out_channels_last_is_refused_by_name(tmp_path):
    for k in range(4):
        _save(tmp_path / f"site-{k}.npz", _signals(10, k), _signals(3, 10 + k))
    x = _signals(10, 9)
    _save(tmp_path / "site-9.npz", x.transpose(0, 2, 1), _signals(3, 19).transpose(0, 2, 1))
    assert x.transpose(0, 2, 1).reshape(10, -1).shape == x.reshape(10, -1).shape  # one width: the old check passed
    with pytest.raises(DatasetError, match=r"site-9.npz: x_train holds examples of shape \(32, 2\) but "
                                           r"site-0.npz's x_train holds \(2, 32\)"):
        load_npz_dir(tmp_path)


def test_train_and_test_of_one_file_laid_out_differently_are_refused(tmp_path):
    _save(tmp_path / "cam.npz", _signals(10, 0), _signals(3, 1).transpose(0, 2, 1))
    with pytest.raises(DatasetError, match=r"cam.npz: x_test holds examples of shape \(32, 2\) but its x_train"):
        load_npz_dir(tmp_path)


def test_layouts_that_hold_values_in_one_order_still_load(tmp_path):
    x = _signals(10, 0)
    _save(tmp_path / "a.npz", x, x[:3])
    _save(tmp_path / "b.npz", x[:, None], x[:3, :, :, None])  # size-1 axes: the same order of values
    _save(tmp_path / "c.npz", x.reshape(10, -1), np.zeros((0, 32, 2)))  # flat; an empty split holds no values
    _save(tmp_path / "d.npz", x, np.zeros((0, 64)))
    data = load_npz_dir(tmp_path)
    assert data.input_shape == (64,)
    for client in data.clients:  # oracle: numpy's row-major flatten of the channels-first signals
        np.testing.assert_array_equal(client.x_train, x.reshape(10, 64))


@pytest.mark.parametrize("saved", [np.array([]), np.array([], np.float32), np.array([], np.int64)],
                         ids=["float64", "float32", "int64"])
def test_a_test_split_saved_as_an_empty_1d_array_is_an_empty_split(tmp_path, saved):
    """np.savez(x_test=np.array([]), y_test=np.array([])) is how "no test examples" is often
    written; it was refused as "x_test has shape (0,)" though a test split may be empty."""
    x = _signals(10, 0)
    _save(tmp_path / "a.npz", x, x[:3])
    np.savez(tmp_path / "b.npz", x_train=x, y_train=np.zeros(10, np.int64), x_test=saved, y_test=np.array([]))
    b = {c.client_id: c for c in load_npz_dir(tmp_path).clients}["b"]
    assert b.x_test.shape == (0, 64) and b.y_test.shape == (0,) and b.y_test.dtype == np.int64
    np.savez(tmp_path / "b.npz", x_train=x, y_train=np.zeros(10, np.int64), x_test=np.zeros(3), y_test=np.zeros(3))
    with pytest.raises(DatasetError, match=r"b.npz: x_test has shape \(3,\); it must be \(examples, features"):
        load_npz_dir(tmp_path)  # 1-D features with examples in them are still refused
