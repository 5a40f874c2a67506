"""`[data] statistics = FILE`: a device with standardize = true standardizes both splits with the
fleet's pooled mean and std from the file instead of its own (under label skew its own follow its
label mix), records them for `fedge device export`, and refuses a bad file by name at start and
at a SIGHUP reload. The files come from `fedge device moments` and `fedge data combine-moments`."""

from __future__ import annotations

import logging
import os
import signal
import time
from types import SimpleNamespace

import numpy as np
import pytest

from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.device_config import DataConfig, load_device_config, load_local_data
from fedge.edge_runtime.device_init import device_toml
from fedge.edge_runtime.fleet_statistics import StatisticsFileError
from fedge.edge_runtime.kernel.configfile import tomllib
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.edge_runtime.kernel.features import as_features
from fedge.edge_runtime.run import build_device, install_reload
from fedge.edge_runtime.standardization_record import recorded_source, recorded_standardization
from fedge.tools.cli import main


def _data(path, rng, loc=300.0, scale=20.0, dtype=np.float32, shape=(6,)):
    x = rng.normal(loc, scale, size=(40, *shape))
    x = np.clip(x, 0, 255).astype(dtype) if dtype == np.uint8 else x.astype(dtype)
    np.savez(path, x_train=x[:30], y_train=rng.integers(0, 3, 30), x_test=x[30:], y_test=rng.integers(0, 3, 10))
    return as_features(x[:30]), as_features(x[30:])


def _stats(path, mean, std, **extra):
    np.savez(path, mean=mean, std=std, **extra)
    return path


def _toml(tmp_path, statistics="", standardize="true"):
    stat_line = f'statistics = "{statistics}"\n' if statistics else ""
    (tmp_path / "d.toml").write_text(f'device_id = "pi-a"\nstate_dir = "{tmp_path / "state"}"\n[data]\n'
                                     f'npz = "{tmp_path / "d.npz"}"\nstandardize = {standardize}\n{stat_line}')
    return tmp_path / "d.toml"


def test_statistics_need_standardize(tmp_path):
    with pytest.raises(ConfigError, match="data.statistics .* needs data.standardize = true"):
        load_device_config(_toml(tmp_path, "fleet.npz", standardize="false"))
    with pytest.raises(ConfigError, match="data.statistics"):
        DataConfig(npz="d.npz", statistics="fleet.npz")
    assert DataConfig(npz="d.npz", standardize=True, statistics="fleet.npz").statistics == "fleet.npz"


def test_the_device_standardizes_with_the_fleet_statistics_file(tmp_path, caplog):
    rng = np.random.default_rng(0)
    for dtype, loc, scale in ((np.float32, 300.0, 20.0), (np.uint8, 120.0, 60.0)):
        x_train, x_test = _data(tmp_path / "d.npz", rng, loc, scale, dtype)
        mean, std = rng.normal(0.5, 0.2, 6), rng.uniform(0.1, 3.0, 6)  # not this device's own
        _stats(tmp_path / "fleet.npz", mean, std)
        with caplog.at_level(logging.INFO, logger="fedge.device"):
            loop, _ = build_device(load_device_config(_toml(tmp_path, tmp_path / "fleet.npz")))
        data = loop.agent.runtime.data
        np.testing.assert_allclose(data.x_train, (x_train.astype(np.float64) - mean) / std, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(data.x_test, (x_test.astype(np.float64) - mean) / std, rtol=1e-6, atol=1e-6)
        assert data.x_train.dtype == np.float32
        got_mean, got_std = recorded_standardization(tmp_path / "state" / "pi-a")  # what the export applies
        assert np.array_equal(got_mean, mean) and np.array_equal(got_std, std)
        assert recorded_source(tmp_path / "state" / "pi-a") == str(tmp_path / "fleet.npz")  # what the export names
        assert any("with the fleet's mean and std from" in r.message and "fleet.npz" in r.message
                   for r in caplog.records)
        caplog.clear()


@pytest.mark.parametrize("make, match", [
    (lambda p: p, "no such statistics file"),
    (lambda p: (p.mkdir(), p)[1], "is a folder, not a statistics file"),
    (lambda p: (p.write_text("mean,std\n1,2\n"), p)[1], "not a readable .npz file"),
    (lambda p: (np.savez(p, mean=np.zeros(6)), p)[1],
     r"no std \(it holds mean\); a statistics file holds mean, std; name the .npz `fedge data combine-moments`"),
    (lambda p: _stats(p, np.zeros(5), np.ones(5)), r"mean has shape \(5,\), where this device's examples have \(6,\)"),
    (lambda p: _stats(p, np.zeros(6), np.ones((3, 2))), r"std has shape \(3, 2\)"),
    (lambda p: _stats(p, np.array(["a"] * 6), np.ones(6)), "mean is <U1, not numbers"),
    (lambda p: _stats(p, np.r_[np.zeros(5), np.nan], np.ones(6)), "a mean or std that is not finite"),
    (lambda p: _stats(p, np.zeros(6), np.r_[np.ones(5), np.inf]), "a mean or std that is not finite"),
    (lambda p: _stats(p, np.zeros(6), np.r_[np.ones(5), 0.0]), "a std of 0; each must be above 0"),
    (lambda p: _stats(p, np.zeros(6), np.r_[np.ones(5), -2.0]), "a std of -2"),
])
def test_a_bad_statistics_file_is_refused_by_name(tmp_path, capsys, make, match):
    _data(tmp_path / "d.npz", np.random.default_rng(1))
    path = make(tmp_path / "fleet.npz")
    with pytest.raises(StatisticsFileError, match=rf"\[data\] statistics {path}: {match}"):
        load_local_data(tmp_path / "d.npz", True, path)
    cfg = load_device_config(_toml(tmp_path, path))
    with pytest.raises(StatisticsFileError, match=match):
        build_device(cfg)  # the device refuses to start, as with bad data
    assert not (tmp_path / "state" / "pi-a" / "standardization.npz").exists()
    assert main(["device", "run", "--config", str(tmp_path / "d.toml")]) == 2  # one line, exit 2, no traceback
    err = capsys.readouterr().err
    assert err.startswith("fedge: error: StatisticsFileError: [data] statistics") and "Traceback" not in err


def test_a_sighup_reload_reads_the_changed_statistics_file(tmp_path, caplog):
    rng = np.random.default_rng(2)
    x_train, x_test = _data(tmp_path / "d.npz", rng)
    fleet = _stats(tmp_path / "fleet.npz", np.full(6, 290.0), np.full(6, 25.0))
    own = tmp_path / "own"
    runtime = DeviceRuntime("pi-1", load_local_data(tmp_path / "d.npz", True, fleet), {}, tmp_path / "state")
    previous, old = signal.getsignal(signal.SIGHUP), runtime.data

    def reload_and_wait(before):
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while runtime.data is before and time.monotonic() < deadline:
            time.sleep(0.01)

    try:
        install_reload(SimpleNamespace(runtime=runtime, check_in_soon=lambda: None), str(tmp_path / "d.npz"), True,
                       own, statistics=str(fleet))
        mean, std = rng.normal(300, 5, 6), rng.uniform(10, 30, 6)
        _stats(fleet, mean, std)  # the fleet's new statistics
        reload_and_wait(old)
        np.testing.assert_allclose(runtime.data.x_train, (x_train.astype(np.float64) - mean) / std, atol=1e-5)
        np.testing.assert_allclose(runtime.data.x_test, (x_test.astype(np.float64) - mean) / std, atol=1e-5)
        deadline = time.monotonic() + 10
        while recorded_standardization(own) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert np.array_equal(recorded_standardization(own)[0], mean)
        kept = runtime.data
        _stats(fleet, np.zeros(5), np.ones(5))  # a bad one: the old data stays, said in the log
        with caplog.at_level(logging.ERROR, logger="fedge.device"):
            os.kill(os.getpid(), signal.SIGHUP)
            deadline = time.monotonic() + 10
            while not any("kept the old data" in r.message for r in caplog.records) and time.monotonic() < deadline:
                time.sleep(0.01)
        assert runtime.data is kept
        assert any("kept the old data" in r.message and "mean has shape (5,)" in r.message for r in caplog.records)
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_device_init_shows_the_statistics_key_commented_out():
    text = device_toml("pi-a", "mqtt://localhost:1883", "/d.npz", "/s")
    line = next(ln for ln in text.splitlines() if "statistics =" in ln)
    assert line.startswith("# statistics = ") and "fleet" in line
    uncommented = text.replace("\n# statistics = ", "\nstatistics = ")
    uncommented = uncommented.replace("standardize = false", "standardize = true")
    assert tomllib.loads(uncommented)["data"]["statistics"].endswith("fleet_statistics.npz")


def test_moments_and_combine_moments_make_the_statistics_of_the_fleet(tmp_path, capsys):
    """The two CLIs end to end, with numpy's mean and std of the pooled training splits as oracle."""
    rng = np.random.default_rng(3)
    trains, files = [], []
    for i, (loc, dtype) in enumerate(((100.0, np.uint8), (160.0, np.uint8), (40.0, np.uint8))):
        folder = tmp_path / f"dev{i}"
        folder.mkdir()
        trains.append(_data(folder / "d.npz", rng, loc, 30.0, dtype)[0])
        _toml(folder)
        files.append(str(folder / "moments.npz"))
        assert main(["device", "moments", "--config", str(folder / "d.toml"), "--out", files[-1]]) == 0
        assert "30 training examples, 6 features" in capsys.readouterr().out
    fleet = tmp_path / "fleet_statistics.npz"
    assert main(["data", "combine-moments", *files, "--out", str(fleet)]) == 0
    pooled = np.concatenate(trains).astype(np.float64)  # uint8 / 255, as the devices read them
    got = np.load(fleet)
    np.testing.assert_allclose(got["mean"], pooled.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(got["std"], pooled.std(axis=0), rtol=1e-12)
    assert got["count"] == 90 and got["devices"] == 3
    assert main(["data", "combine-moments", *files[:2], "--out", str(fleet)]) == 0  # its own file: replaced
    assert np.load(fleet)["count"] == 60
    # the file loads as a device's statistics
    assert load_local_data(tmp_path / "dev0" / "d.npz", True, fleet).x_train.dtype == np.float32


@pytest.mark.parametrize("command", ["moments", "combine"])
def test_the_clis_never_replace_a_file_fedge_did_not_write(tmp_path, capsys, command):
    _data(tmp_path / "d.npz", np.random.default_rng(4))
    _toml(tmp_path)
    assert main(["device", "moments", "--config", str(tmp_path / "d.toml"), "--out", str(tmp_path / "m.npz")]) == 0
    argv = (["device", "moments", "--config", str(tmp_path / "d.toml"), "--out"] if command == "moments"
            else ["data", "combine-moments", str(tmp_path / "m.npz"), "--out"])
    foreign = tmp_path / "mine.npz"
    for content in (lambda: np.savez(foreign, mean=np.zeros(6), std=np.ones(6)), lambda: foreign.write_text("notes")):
        content()
        before = foreign.read_bytes()
        capsys.readouterr()
        assert main([*argv, str(foreign)]) == 2
        assert "fedge never replaces a file it did not write" in capsys.readouterr().err
        assert foreign.read_bytes() == before
    other = tmp_path / "m.npz" if command == "combine" else None  # combine over a moments file: not its own
    if other is not None:
        assert main([*argv, str(other)]) == 2
    assert main([*argv, str(tmp_path)]) == 2  # a folder
    assert main([*argv, str(tmp_path / "out.npz")]) == 0 and main([*argv, str(tmp_path / "out.npz")]) == 0


@pytest.mark.parametrize("make, match", [
    (lambda p: p, "no such moments file"),
    (lambda p: (p.write_text("x"), p)[1], "not a readable .npz file"),
    (lambda p: (np.savez(p, mean=np.zeros(6), std=np.ones(6)), p)[1],
     r"no count, m2, mean_residual \(it holds mean, std\); a moments file holds count, mean, m2, mean_residual; "
     "name the .npz `fedge device moments`"),
    (lambda p: (np.savez(p, count=np.zeros(2, int), mean=np.zeros(6), m2=np.ones(6), mean_residual=np.zeros(6)),
                p)[1], "count is int64 of shape"),
    (lambda p: (np.savez(p, count=np.int64(0), mean=np.zeros(6), m2=np.ones(6), mean_residual=np.zeros(6)),
                p)[1], "count 0 is not a positive"),
    (lambda p: (np.savez(p, count=np.int64(3), mean=np.zeros(5), m2=np.ones(5), mean_residual=np.zeros(5)),
                p)[1], r"features of shape \(5,\), where .*m0.npz has \(6,\)"),
])
def test_combine_moments_refuses_a_bad_moments_file_by_name(tmp_path, capsys, make, match):
    good = tmp_path / "m0.npz"
    np.savez(good, count=np.int64(3), mean=np.zeros(6), m2=np.ones(6), mean_residual=np.zeros(6))
    bad = make(tmp_path / "bad.npz")
    assert main(["data", "combine-moments", str(good), str(bad), "--out", str(tmp_path / "f.npz")]) == 2
    err = capsys.readouterr().err
    assert "DatasetError" in err and "Traceback" not in err
    assert __import__("re").search(match, err), err
    assert not (tmp_path / "f.npz").exists()


def test_device_moments_needs_only_the_device_install(tmp_path):
    """A board has [device] only: `fedge device moments` must not reach for the simulator's or
    the coordinator's modules (a missing-extra error on the board that must run it)."""
    from tests.tools.test_cli_errors import DEVICE_ONLY, _run_without

    _data(tmp_path / "d.npz", np.random.default_rng(5))
    _toml(tmp_path)
    done = _run_without(DEVICE_ONLY, "device", "moments", "--config", str(tmp_path / "d.toml"),
                        "--out", str(tmp_path / "m.npz"))
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "m.npz")["count"] == 30
