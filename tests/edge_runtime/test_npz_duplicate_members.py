"""A .npz whose zip holds two members of one array name (x_train.npy twice, or x_train beside
x_train.npy): numpy, and the header-first reader before this, read the last one silently, so
which array a device trained on was the file's to hide. Refused by name for every reader of
npz_members (a device's data file here)."""

from __future__ import annotations

import io
import warnings
import zipfile

import numpy as np
import pytest

from fedge.edge_runtime.data_file import read_data_npz
from fedge.edge_runtime.kernel.errors import DatasetError


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


@pytest.mark.parametrize("second", ["x_train.npy", "x_train"])
def test_two_members_of_one_name_are_refused(tmp_path, second):
    path = tmp_path / "d.npz"
    honest = {"x_train": np.zeros((4, 3), np.float32), "y_train": np.arange(4) % 2,
              "x_test": np.zeros((2, 3), np.float32), "y_test": np.arange(2) % 2}
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w") as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name it writes
        for name, a in honest.items():
            zf.writestr(f"{name}.npy", _npy(a))
        zf.writestr(second, _npy(np.full((4, 3), 9.0, np.float32)))
    assert np.load(path)["x_train"][0, 0] == 9.0  # numpy takes the last one without a word
    with pytest.raises(DatasetError, match=r"holds two arrays named x_train \(x_train.npy and x_train"):
        read_data_npz(path)
