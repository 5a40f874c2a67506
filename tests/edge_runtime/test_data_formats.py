"""Formats another tool plausibly saves, read alike by the device (load_local_data) and by
`fedge simulate --data` (load_npz_dir) through examples.check_split: the cheap, unambiguous ones
taken as meant ((n, 1) labels, uint8 pixels), the others refused by name before anything trains
(benchmarks/results/2026-12-06-npz-fuzz)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.device_config import load_local_data
from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import load_npz_dir

RNG = np.random.default_rng(0)
X = RNG.normal(size=(12, 6)).astype(np.float32)
Y = np.arange(12) % 3


def _save(path: Path, **override) -> Path:
    arrays = {"x_train": X[:9], "y_train": Y[:9], "x_test": X[9:], "y_test": Y[9:]}
    arrays.update(override)
    np.savez(path, **arrays)
    return path


def _both(path: Path) -> list:
    """What each loader made of the file: (x_train, y_train, x_test, y_test), the simulator's flattened."""
    dev = load_local_data(path)
    sim = load_npz_dir(path.parent).clients[0]
    return [(d.x_train, d.y_train, d.x_test, d.y_test) for d in (dev, sim)]


def test_labels_saved_as_a_column_are_taken_as_one_label_per_example(tmp_path):
    path = _save(tmp_path / "col.npz", y_train=Y[:9, None], y_test=Y[9:, None].astype(np.float64))
    for _, y_train, _, y_test in _both(path):
        np.testing.assert_array_equal(y_train, Y[:9])
        np.testing.assert_array_equal(y_test, Y[9:])
        assert y_train.dtype == y_test.dtype == np.int64


def test_one_hot_labels_are_refused_with_the_argmax_that_fixes_them(tmp_path):
    path = _save(tmp_path / "hot.npz", y_train=np.eye(3)[Y[:9]])
    for load in (load_local_data, lambda p: load_npz_dir(p.parent)):
        with pytest.raises(DatasetError, match=r"hot.npz: y_train has shape \(9, 3\); .*save y.argmax\(axis=1\)"):
            load(path)


@pytest.mark.parametrize("label", [np.uint64(2 ** 63 + 5), np.float64(1e20), np.int64(2 ** 63 - 2)])
def test_a_label_past_any_models_classes_is_refused_at_load_not_wrapped(tmp_path, label):
    # cast to int64 first, 2**63 + 5 and 1e20 became negative labels that the device loaded
    y = Y[:9].astype(label.dtype)
    y[4] = label
    path = _save(tmp_path / "big.npz", y_train=y)
    with pytest.raises(DatasetError, match=r"big.npz: y_train has label .*; labels must be class indices 0 .. 99999"):
        load_local_data(path)
    with pytest.raises(DatasetError, match=r"big.npz: y_train has label .*; labels must be class indices 0 .. 9999 "):
        load_npz_dir(tmp_path)


def test_examples_without_features_are_refused_at_load_on_the_device_too(tmp_path):
    path = _save(tmp_path / "none.npz", x_train=X[:9, :0], x_test=X[9:, :0])
    for load in (load_local_data, lambda p: load_npz_dir(p.parent)):
        with pytest.raises(DatasetError, match=r"none.npz: x_train has shape \(9, 0\), i.e. no features per example"):
            load(path)


def test_uint8_pixels_are_read_as_intensities_in_0_1(tmp_path):
    pixels = RNG.integers(0, 256, size=(12, 2, 3), dtype=np.uint8)
    path = _save(tmp_path / "img.npz", x_train=pixels[:9], x_test=pixels[9:])
    (dev, sim) = _both(path)
    want = pixels.astype(np.float64) / 255.0  # oracle: the division, done apart in float64
    np.testing.assert_allclose(dev[0], want[:9], rtol=1e-6)
    np.testing.assert_allclose(dev[2], want[9:], rtol=1e-6)
    np.testing.assert_allclose(sim[0], want[:9].reshape(9, 6), rtol=1e-6)
    assert dev[0].dtype == sim[0].dtype == np.float32
    ints = RNG.integers(0, 256, size=(12, 6)).astype(np.int64)  # other integer features keep their values
    np.testing.assert_array_equal(_both(_save(tmp_path / "img.npz", x_train=ints[:9], x_test=ints[9:]))[0][0], ints[:9])


def test_hidden_files_in_a_data_folder_are_skipped_and_named(tmp_path, caplog):
    _save(tmp_path / "phone.npz")
    (tmp_path / "._phone.npz").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X" + bytes(64))  # AppleDouble
    (tmp_path / ".DS_Store").write_bytes(bytes(16))
    with caplog.at_level(logging.WARNING, logger="fedge.datasets"):
        data = load_npz_dir(tmp_path)
    assert [c.client_id for c in data.clients] == ["phone"]
    assert any("skipped 1 hidden file(s) (._phone.npz)" in r.getMessage() for r in caplog.records)
