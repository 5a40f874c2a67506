"""The fleet statistics' inputs as the hostile files they may be (review of 4576bd4 / e2683ef):
a zip bomb refused from its headers, moments whose count or values would poison or overflow the
pool refused by name, files that differ only by size-1 axes pooled and applied, and the export
describing the statistics the device recorded, not the config as it is now."""

from __future__ import annotations

import io
import re
import tracemalloc
import zipfile
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.edge_runtime.device_config import load_local_data
from fedge.edge_runtime.fleet_statistics import StatisticsFileError, load_fleet_statistics
from fedge.edge_runtime.kernel.errors import DatasetError
from fedge.edge_runtime.kernel.features import Moments, combine_moments, feature_moments
from fedge.edge_runtime.standardization_record import record_standardization
from fedge.tools.cli import main
from fedge.tools.device_export import device_statistics

DEFAULT_MAX_EXAMPLES = 100_000  # tools/fleet_moments.py's, checked below against the coordinator's
BOMB_VALUES = 8 << 20  # 64 MiB of float64 zeros once inflated; ~65 KB deflated


def _bomb(path, key, others):
    """An .npz whose `key` inflates to BOMB_VALUES float64 zeros, beside the small arrays `others`."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (BOMB_VALUES,)})
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{key}.npy", "w", force_zip64=True) as fh:
            fh.write(header.getvalue())
            zeros = bytes(1 << 20)
            for _ in range(BOMB_VALUES * 8 // len(zeros)):
                fh.write(zeros)
        for name, array in others.items():
            buf = io.BytesIO()
            np.save(buf, array)
            zf.writestr(f"{name}.npy", buf.getvalue())
    assert path.stat().st_size < 1 << 20
    return path


def _peak_bytes(call):
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_a_statistics_file_that_inflates_is_refused_from_its_header(tmp_path):
    """np.load took the whole array (over 1 GiB for a 1 GiB bomb) before the shape check."""
    path = _bomb(tmp_path / "fleet.npz", "mean", {"std": np.ones(3)})
    errors = []

    def load():
        with pytest.raises(StatisticsFileError) as caught:
            load_fleet_statistics(path, (3,))
        errors.append(str(caught.value))

    assert _peak_bytes(load) < 4 << 20  # the array is 64 MiB: never allocated
    assert re.search(rf"statistics {path}: mean has shape \(8388608,\) of float64, which brings the file's arrays to "
                     r"67,108,864 bytes loaded; a statistics file may hold 48 bytes for this device's examples of "
                     r"shape \(3,\)", errors[0]), errors[0]


def test_a_moments_file_that_inflates_is_refused_from_its_header(tmp_path, capsys):
    good = tmp_path / "m0.npz"
    np.savez(good, count=np.int64(3), mean=np.zeros(3), m2=np.ones(3), mean_residual=np.zeros(3))
    bomb = _bomb(tmp_path / "m1.npz", "m2", {"count": np.int64(3), "mean": np.zeros(3), "mean_residual": np.zeros(3)})
    argv = ["data", "combine-moments", str(good), str(bomb), "--out", str(tmp_path / "f.npz")]
    peak = _peak_bytes(lambda: main(argv))
    err = capsys.readouterr().err
    assert peak < 8 << 20 and "Traceback" not in err
    assert re.search(r"DatasetError: .*m1.npz: m2 has shape \(8388608,\) of float64, which brings the file's arrays to "
                     r"64.0 MiB loaded; a moments file may hold 48 MiB", err), err
    assert not (tmp_path / "f.npz").exists()


def _moments_file(path, count, mean=0.0, m2=1.0, shape=(3,), count_dtype=np.int64):
    np.savez(path, count=np.array(count, count_dtype), mean=np.full(shape, mean), m2=np.full(shape, m2),
             mean_residual=np.zeros(shape))
    return str(path)


def test_combine_moments_prints_each_files_share(tmp_path, capsys):
    files = [_moments_file(tmp_path / f"m{i}.npz", n) for i, n in enumerate((30, 60, 10))]
    assert main(["data", "combine-moments", *files, "--out", str(tmp_path / "f.npz")]) == 0
    out = capsys.readouterr().out.splitlines()
    for name, n in zip(files, (30, 60, 10)):
        assert f"{name}: {n} training examples, {n / 100:.1%} of the pooled statistics" in out


@pytest.mark.parametrize("counts, dtype, match", [
    ((30, 10**9), np.int64, rf"m1.npz: count 1000000000 is above {DEFAULT_MAX_EXAMPLES}"),  # the review's poison
    ((30, 2**64 - 1), np.uint64, r"m1.npz: count 18446744073709551615 is above"),  # was a raw OverflowError
    ((2**62, 2**62, 2**62), np.int64, r"m0.npz: count 4611686018427387904 is above"),  # so was this
])
def test_combine_moments_refuses_a_count_above_the_cap(tmp_path, capsys, counts, dtype, match):
    files = [_moments_file(tmp_path / f"m{i}.npz", n, count_dtype=dtype) for i, n in enumerate(counts)]
    assert main(["data", "combine-moments", *files, "--out", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err
    assert "DatasetError" in err and "Traceback" not in err and re.search(match, err), err
    assert not (tmp_path / "f.npz").exists()
    if counts[1] == 10**9:  # a fleet of larger devices raises the cap
        assert main(["data", "combine-moments", *files, "--out", str(tmp_path / "f.npz"),
                     "--max-examples", str(10**9)]) == 0
        assert np.load(tmp_path / "f.npz")["count"] == 10**9 + 30


def test_the_default_cap_is_the_coordinators_max_examples():
    from fedge.coordinator.config import CoordinatorConfig
    from fedge.tools.fleet_moments import DEFAULT_MAX_EXAMPLES as default

    assert default == DEFAULT_MAX_EXAMPLES == CoordinatorConfig().max_examples


def test_counts_whose_sum_overflows_int64_are_refused_by_name():
    parts = [Moments(2**62, np.zeros(2), np.ones(2), np.zeros(2))] * 3
    with pytest.raises(DatasetError, match=r"counts that sum to 13835058055282163712, above 9223372036854775807"):
        combine_moments(parts, max_count=2**64)


def test_pooled_statistics_that_are_not_finite_are_refused_before_writing(tmp_path, capsys):
    """Means and m2 of 1e300, each finite, pool to a std of inf: a file no device could apply."""
    with pytest.raises(DatasetError, match="pooled feature 0: mean 0, std inf, not finite"):
        combine_moments([Moments(5, np.full(2, 1e300), np.full(2, 1e300), np.zeros(2)),
                         Moments(5, np.full(2, -1e300), np.full(2, 1e300), np.zeros(2))])
    files = [_moments_file(tmp_path / "m0.npz", 5, 1e300, 1e300), _moments_file(tmp_path / "m1.npz", 5, -1e300, 1e300)]
    assert main(["data", "combine-moments", *files, "--out", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err
    assert "DatasetError: pooled feature 0: mean" in err and "not finite" in err and "Traceback" not in err
    assert not (tmp_path / "f.npz").exists()


def test_moments_that_differ_by_size_1_axes_pool_as_the_concatenation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(3.0, 2.0, (20, 4, 4)), rng.normal(-1.0, 0.5, (30, 1, 4, 4))
    mean, std = combine_moments([feature_moments(a), feature_moments(b)])
    whole = np.concatenate([a, b.reshape(30, 4, 4)])
    assert mean.shape == (4, 4)
    np.testing.assert_allclose(mean, whole.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, whole.std(axis=0), rtol=1e-12)
    with pytest.raises(DatasetError, match=r"features of shape \(2, 8\), where moments 1 of 2 has \(4, 4\)"):
        combine_moments([feature_moments(a), feature_moments(rng.normal(size=(5, 2, 8)))])


def test_statistics_of_another_size_1_layout_apply_to_the_devices_examples(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(5.0, 2.0, (40, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x_train=x[:30], y_train=rng.integers(0, 3, 30), x_test=x[30:],
             y_test=rng.integers(0, 3, 10))
    mean, std = rng.normal(5.0, 1.0, (4, 4)), rng.uniform(0.5, 3.0, (4, 4))
    np.savez(tmp_path / "fleet.npz", mean=mean, std=std)
    data = load_local_data(tmp_path / "d.npz", True, tmp_path / "fleet.npz")
    assert data.x_train.shape == (30, 1, 4, 4)
    np.testing.assert_allclose(data.x_train, (x[:30].astype(np.float64) - mean[None]) / std[None], rtol=1e-6, atol=1e-6)


def _cfg(tmp_path, statistics):
    return SimpleNamespace(device_id="pi-a", data=SimpleNamespace(npz=str(tmp_path / "d.npz"), statistics=statistics))


@pytest.mark.parametrize("recorded, configured, want", [
    ("/srv/fleet.npz", "", "the fleet's mean and std ([data] statistics /srv/fleet.npz) as it applies them"),
    ("", "/srv/fleet.npz", "this device's training mean and std as it applies them"),
    ("/srv/old.npz", "/srv/new.npz", "the fleet's mean and std ([data] statistics /srv/old.npz) as it applies them"),
])
def test_the_export_describes_the_recorded_source_not_the_config(tmp_path, recorded, configured, want):
    stats = (np.zeros(3), np.ones(3))
    record_standardization(tmp_path, stats, recorded)
    got, words = device_statistics(_cfg(tmp_path, configured), tmp_path)
    assert np.array_equal(got[0], stats[0]) and words.startswith(want), words


@pytest.mark.parametrize("configured, want", [
    ("/srv/fleet.npz", "the fleet's mean and std ([data] statistics /srv/fleet.npz)"),
    ("", "this device's training mean and std"),
])
def test_a_record_from_before_the_source_is_described_from_the_config(tmp_path, configured, want):
    np.savez(tmp_path / "standardization.npz", mean=np.zeros(3), std=np.ones(3))  # as fedge wrote it before
    _, words = device_statistics(_cfg(tmp_path, configured), tmp_path)
    assert words.startswith(want), words
