"""--data features whose variation the cast to float32 erases (tools/float32_steps.py): float64
blobs around 10^8 trained to 0.77-0.88 where the same blobs around 0 reach 1.0, with no word.
Oracle: the rounding error of numpy's own float32 cast, measured against the feature's std."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import load_npz_dir


def _folder(root: Path, x_of, files: int = 2) -> None:
    rng = np.random.default_rng(0)
    for k in range(files):
        y = np.arange(30) % 2
        x = x_of(rng.normal(size=(30, 3)) + y[:, None])
        np.savez(root / f"d{k}.npz", x_train=x[:15], y_train=y[:15], x_test=x[15:], y_test=y[15:])


def _cast_lines(caplog) -> list[str]:
    return [m for m in caplog.messages if "cast erases" in m]


def _rounding_share(x: np.ndarray) -> float:
    """The float32 cast's rounding error (RMS) over the features' std, as numpy casts."""
    x = x.astype(np.float64)
    return float((x - x.astype(np.float32).astype(np.float64)).std() / x.std())


def test_float64_features_around_a_large_offset_are_named(tmp_path: Path, caplog) -> None:
    _folder(tmp_path, lambda x: x * 3 + 1e8)
    saved = np.load(tmp_path / "d0.npz")["x_train"]
    assert _rounding_share(saved) > 0.1  # the oracle: the cast does erase a tenth of the spread and more
    with caplog.at_level(logging.WARNING, logger="fedge.datasets"):
        load_npz_dir(tmp_path)
    lines = _cast_lines(caplog)
    assert len(lines) == 4  # 2 files x 2 splits
    assert lines[0].startswith(f"{tmp_path / 'd0.npz'}: x_train is saved as float64, and 3 of its 3 features")
    assert "step there is 8," in lines[0]  # np.spacing(np.float32(1e8))
    assert np.spacing(np.float32(1e8)) == 8


@pytest.mark.parametrize("case", ["float64 unit scale", "float32 offset", "int64 counts", "epoch seconds over a day"])
def test_features_the_cast_keeps_say_nothing(tmp_path: Path, caplog, case: str) -> None:
    x_of = {"float64 unit scale": lambda x: x,
            "float32 offset": lambda x: (x + 1e5).astype(np.float32),  # float32 as saved: the reader casts nothing
            "int64 counts": lambda x: np.round(x * 10).astype(np.int64),
            "epoch seconds over a day": lambda x: np.round(1.7e9 + x * 25_000)}[case]
    _folder(tmp_path, x_of)
    saved = np.load(tmp_path / "d0.npz")["x_train"]
    if saved.dtype == np.float64:
        assert _rounding_share(saved) < 0.01
    with caplog.at_level(logging.WARNING, logger="fedge.datasets"):
        load_npz_dir(tmp_path)
    assert _cast_lines(caplog) == []


def test_features_the_cast_erases_entirely_are_refused_saying_so(tmp_path: Path, caplog) -> None:
    _folder(tmp_path, lambda x: (1_700_000_000_000 + x * 1000).astype(np.int64))  # epoch ms, a std of 1 s
    with caplog.at_level(logging.WARNING, logger="fedge.datasets"), \
            pytest.raises(DatasetError, match="the cast to float32 that every reader makes erased it"):
        load_npz_dir(tmp_path)
    assert len(_cast_lines(caplog)) == 4


def test_many_files_are_named_five_then_counted(tmp_path: Path, caplog) -> None:
    _folder(tmp_path, lambda x: x * 3 + 1e8, files=4)  # 8 splits
    with caplog.at_level(logging.WARNING, logger="fedge.datasets"):
        load_npz_dir(tmp_path)
    assert len(_cast_lines(caplog)) == 5
    assert f"{tmp_path}: 3 more splits lose feature variation in the cast to float32" in caplog.messages


def test_a_split_of_few_examples_is_not_judged(tmp_path: Path, caplog) -> None:
    """5 examples give too rough a std: epoch milliseconds over an hour flagged in a 5-example
    x_test where the 50 of its x_train were not (float32_steps.MIN_EXAMPLES)."""
    rng = np.random.default_rng(1)
    y = np.arange(55) % 2
    x = np.round(1_700_000_000_000 + rng.normal(size=(55, 2)) * 3.6e6 + y[:, None] * 3.6e6).astype(np.int64)
    last = np.array([-1.5e6, -0.7e6, 0, 0.7e6, 1.5e6])[:, None]  # the last readings, closer together
    x[50:] = 1_700_000_000_000 + last.astype(np.int64)
    np.savez(tmp_path / "d0.npz", x_train=x[:50], y_train=y[:50], x_test=x[50:], y_test=y[50:])
    with caplog.at_level(logging.WARNING, logger="fedge.datasets"):
        load_npz_dir(tmp_path)
    assert _cast_lines(caplog) == []


def test_a_constant_x_train_is_not_blamed_on_the_cast_of_x_test(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "a.npz", x_train=np.full((20, 2), 5.0), y_train=np.arange(20) % 2,
             x_test=1e8 + rng.normal(0, 3, (20, 2)), y_test=np.arange(20) % 2)
    with caplog.at_level(logging.WARNING, logger="fedge.datasets"), \
            pytest.raises(DatasetError, match="Check that x_train is the feature array you meant"):
        load_npz_dir(tmp_path)
    assert [m.split(":")[1].split()[0] for m in _cast_lines(caplog)] == ["x_test"]  # the warning still names it
