"""Which files of a --data folder are clients (tools/data_folder.py): a client saved with the
suffix in capitals was left out of the run without a word, and other entries were skipped
silently. Oracle: the files written, counted by hand."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.tools.datasets import load_npz_dir


def _save(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:  # np.savez appends .npz to a name without it: write through a handle
        np.savez(fh, x_train=rng.random((6, 3)).astype(np.float32), y_train=np.array([0, 1, 2, 0, 1, 2]),
                 x_test=rng.random((3, 3)).astype(np.float32), y_test=np.array([0, 1, 2]))


def test_a_client_saved_as_NPZ_is_a_device(tmp_path: Path) -> None:
    for k, name in enumerate(("a.npz", "b.NPZ", "c.Npz", "d.npz")):
        _save(tmp_path / name, k)
    data = load_npz_dir(tmp_path)
    assert [c.client_id for c in data.clients] == ["a", "b", "c", "d"]  # 4 files written, 4 devices
    assert data.num_examples == 4 * 9


def test_two_files_naming_one_device_are_refused(tmp_path: Path) -> None:
    _save(tmp_path / "a.npz")
    _save(tmp_path / "a.NPZ", 1)
    with pytest.raises(DatasetError, match=r"a\.NPZ and a\.npz name the same device|a\.npz and a\.NPZ name the same"):
        load_npz_dir(tmp_path)


def test_entries_that_are_not_clients_are_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _save(tmp_path / "a.npz")
    _save(tmp_path / "b.npz", 1)
    (tmp_path / "labels.csv").write_text("0,1\n")
    np.save(tmp_path / "c.npy", np.zeros(3))
    (tmp_path / "site-2").mkdir()
    (tmp_path / ".DS_Store").write_bytes(b"\0")  # the OS's, not the user's: not named
    with caplog.at_level(logging.WARNING, logger="fedge.datasets"):
        data = load_npz_dir(tmp_path)
    assert len(data.clients) == 2
    lines = [r.getMessage() for r in caplog.records if "not .npz files" in r.getMessage()]
    assert len(lines) == 1 and "skipped 3 entries" in lines[0]
    assert "c.npy, labels.csv, site-2/" in lines[0] and ".DS_Store" not in lines[0]


def test_a_folder_without_clients_says_what_it_holds(tmp_path: Path) -> None:
    for k in range(3):
        np.save(tmp_path / f"dev-{k}.npy", np.zeros(3))
    with pytest.raises(DatasetError, match=r"no \.npz files \(it holds dev-0\.npy, dev-1\.npy, dev-2\.npy\)"):
        load_npz_dir(tmp_path)
