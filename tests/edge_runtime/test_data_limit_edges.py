"""A device's data file at its limits (data_file.py, examples.py), for the mutation7-agent audit:
MAX_DATA_BYTES exactly (counted as float32: a uint8 value takes 4 bytes once loaded), the largest
class index a model can have, and labels saved as floats that are not whole numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime import data_file
from fedge.edge_runtime.examples import check_split
from fedge.edge_runtime.kernel.errors import DatasetError


def _save(path: Path) -> tuple[Path, int]:
    """A small file of uint8 images, and its size loaded by the documented rule, by hand:
    each value counted as 4 bytes (float32), or its own size if larger (int64 labels)."""
    arrays = {"x_train": np.zeros((6, 2, 3), np.uint8), "y_train": np.zeros(6, np.int64),
              "x_test": np.zeros((2, 2, 3), np.uint8), "y_test": np.zeros(2, np.int64)}
    np.savez(path, **arrays)
    loaded = 6 * 6 * 4 + 6 * 8 + 2 * 6 * 4 + 2 * 8
    assert loaded == sum(a.size * max(a.itemsize, 4) for a in arrays.values())
    return path, loaded


def test_a_file_of_exactly_max_data_bytes_loads_and_one_byte_less_refuses_it(tmp_path, monkeypatch):
    path, loaded = _save(tmp_path / "d.npz")
    monkeypatch.setattr(data_file, "MAX_DATA_BYTES", loaded)
    assert set(data_file.read_data_npz(path)) == set(data_file.DATA_KEYS)
    monkeypatch.setattr(data_file, "MAX_DATA_BYTES", loaded - 1)
    with pytest.raises(DatasetError, match="y_test has shape"):  # the last array brings it over
        data_file.read_data_npz(path)


def test_uint8_values_count_as_float32_against_the_limit(tmp_path, monkeypatch):
    # As saved the file's arrays take 6*6 + 48 + 2*6 + 16 = 112 bytes; loaded, 256. A limit between refuses it.
    path, loaded = _save(tmp_path / "d.npz")
    monkeypatch.setattr(data_file, "MAX_DATA_BYTES", 200)
    assert 112 < 200 < loaded
    with pytest.raises(DatasetError, match="x_test has shape"):  # x_train 144 + y_train 48, then x_test's 48
        data_file.read_data_npz(path)


@pytest.mark.parametrize("top, refused", [(9, False), (10, True)])
def test_a_label_at_max_classes_is_refused_and_one_below_loads(top, refused):
    x, y = np.zeros((3, 2), np.float32), np.array([0, 1, top], np.uint16)
    if refused:
        with pytest.raises(DatasetError, match="has label 10; labels must be class indices 0 .. 9"):
            check_split(Path("d.npz"), "train", x, y, max_classes=10)
    else:
        assert check_split(Path("d.npz"), "train", x, y, max_classes=10)[1].tolist() == [0, 1, 9]


def test_float_labels_must_be_whole_numbers():
    x = np.zeros((3, 2), np.float32)
    assert check_split(Path("d.npz"), "train", x, np.array([0.0, 2.0, 1.0]))[1].tolist() == [0, 2, 1]
    with pytest.raises(DatasetError, match="y_train holds non-integer values"):
        check_split(Path("d.npz"), "train", x, np.array([0.0, 1.5, 1.0]))
