"""`fedge simulate --data` warns, per file, when its x_test is on another scale than its x_train
(edge_runtime/split_scale.py, shared with a device's loader): one line naming the file and both
scales, a warning and not an error. Oracle: the root mean squares of the splits as the devices
train on them, computed here with numpy directly."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.datasets import load_wine

from fedge.tools.datasets import load_npz_dir


def _folder(folder, scale_of_last_test=1.0, standardized=True):
    """3 files of wine rows (standardized over the whole set when `standardized`); the last
    file's x_test multiplied by scale_of_last_test. Returns the files' paths."""
    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    if standardized:
        x = (x - x.mean(0)) / x.std(0)
    folder.mkdir()
    files = []
    for i in range(3):
        rows = np.arange(i, len(y), 8)[:20]  # wine is sorted by class: a stride of 3 kept training on class 0 alone
        xt, xs = x[rows[:15]], x[rows[15:]] * (scale_of_last_test if i == 2 else 1.0)
        files.append(folder / f"d{i}.npz")
        np.savez(files[-1], x_train=xt, y_train=y[rows[:15]], x_test=xs, y_test=y[rows[15:]])
    return files


def _rms(x):
    return float(np.sqrt((x.astype(np.float64) ** 2).mean()))


def _scale_lines(caplog):
    return [m for m in caplog.messages if "another scale" in m]


@pytest.mark.parametrize("standardize", [None, False, True])
def test_a_test_split_255_times_its_training_scale_is_named_with_both_scales(tmp_path, caplog, standardize):
    files = _folder(tmp_path / "off", scale_of_last_test=255.0)
    with caplog.at_level(logging.WARNING, logger="fedge"):
        load_npz_dir(tmp_path / "off", standardize=standardize)
    (line,) = _scale_lines(caplog)
    saved = np.load(files[2])
    train, test = _rms(saved["x_train"]), _rms(saved["x_test"])  # standardizing keeps the gap: compared as saved
    assert line.startswith(f"{files[2]}: ") and f"{test:.4g} against {train:.4g}" in line


def test_honest_folders_and_the_pixels_auto_reads_as_x_over_255_say_nothing_of_scale(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="fedge"):
        for name, standardized in (("std", True), ("raw", False)):
            _folder(tmp_path / name, standardized=standardized)
            for standardize in (None, False, True):
                load_npz_dir(tmp_path / name, standardize=standardize)
        # x_train saved as uint8, x_test as float32 0..255: auto reads both as x / 255 (and says so)
        pixels = np.random.default_rng(0).integers(0, 256, (2, 10, 6))
        (tmp_path / "pix").mkdir()
        for i in range(2):
            np.savez(tmp_path / "pix" / f"p{i}.npz", x_train=pixels[i, :7].astype(np.uint8), y_train=np.arange(7) % 2,
                     x_test=pixels[i, 7:].astype(np.float32), y_test=np.arange(3) % 2)
        assert load_npz_dir(tmp_path / "pix", standardize=None).standardizing.divided_by_255
    assert not _scale_lines(caplog)


def test_a_folder_saved_wrong_throughout_names_five_files_and_counts_the_rest(tmp_path, caplog):
    x = np.random.default_rng(0).random((8, 10, 4)).astype(np.float32)  # in [0, 1]
    (tmp_path / "all").mkdir()
    for i in range(8):
        np.savez(tmp_path / "all" / f"d{i}.npz", x_train=x[i, :7], y_train=np.arange(7) % 2, x_test=x[i, 7:] * 255,
                 y_test=np.arange(3) % 2)
    with caplog.at_level(logging.WARNING, logger="fedge"):
        load_npz_dir(tmp_path / "all", standardize=False)
    named = _scale_lines(caplog)
    assert [m.split(":")[0] for m in named[:5]] == [str(tmp_path / "all" / f"d{i}.npz") for i in range(5)]
    assert len(named) == 6 and "3 more files" in named[5] and "d5.npz, d6.npz, d7.npz" in named[5]
