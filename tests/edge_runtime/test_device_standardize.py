"""`[data] standardize = true`: a real device standardizes its own features with its own
training split's mean and std, as `fedge simulate --data` does on each simulated device (auto
on far-from-standardized data); without it a device trained on raw features as saved, and the
fleet an operator deployed from a simulation that had standardized them declined `diverged`."""

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
from fedge.edge_runtime.kernel.errors import ConfigError, DatasetError
from fedge.edge_runtime.kernel.features import as_features, feature_statistics, standardize
from fedge.edge_runtime.run import build_device, install_reload
from fedge.edge_runtime.standardization_record import recorded_standardization
from fedge.tools.datasets import ClientData, FederatedDataset
from fedge.tools.standardizing import standardize_per_device


def _old_formula(x_train, x_test):
    """tools/standardizing.standardize_per_device as it was before the device shared it (1079dee)."""
    x = x_train.astype(np.float64)
    mean = x.mean(axis=0) if len(x) else np.zeros(x.shape[1:])
    std = x.std(axis=0) if len(x) else np.ones(x.shape[1:])
    std = np.where(std > 4 * 2.0**-23 * np.maximum(np.abs(mean), 1.0), std, 1.0)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def _loop_oracle(x_train, x):
    """The standardization as a plain loop over features, in float64."""
    flat, out = x_train.reshape(len(x_train), -1).astype(np.float64), np.empty(x.shape, np.float64)
    for j in range(flat.shape[1]):
        mean, std = flat[:, j].mean(), flat[:, j].std()
        std = std if std > 4 * 2.0**-23 * max(abs(mean), 1.0) else 1.0
        out.reshape(len(x), -1)[:, j] = (x.reshape(len(x), -1)[:, j] - mean) / std
    return out


def _cases(rng):
    raw = rng.normal(2e4, 1e4, size=(30, 5)).astype(np.float32)
    raw[:, 2] = 7.0  # constant on this device: centred, not divided by ~0
    yield raw, rng.normal(2e4, 1e4, size=(9, 5)).astype(np.float32)
    tiny = rng.normal(0, 1e-4, size=(29, 2, 3)).astype(np.float32)  # barely varies; examples of shape (2, 3)
    yield tiny[:25], tiny[25:]
    yield as_features(rng.integers(0, 256, (20, 6), dtype=np.uint8)), np.zeros((0, 6), np.float32)
    yield np.zeros((0, 4), np.float32), rng.normal(size=(3, 4)).astype(np.float32)  # a client with no training rows


def test_the_device_formula_is_the_simulators_bit_for_bit():
    for x_train, x_test in _cases(np.random.default_rng(0)):
        mean, std = feature_statistics(x_train)
        want_train, want_test = _old_formula(x_train, x_test)
        assert np.array_equal(standardize(x_train, mean, std), want_train)
        assert np.array_equal(standardize(x_test, mean, std), want_test)
        y = np.zeros(len(x_train), np.int64)
        data = FederatedDataset("d", (ClientData("c", x_train, y, x_test, np.zeros(len(x_test), np.int64)),),
                                num_classes=2, input_shape=x_train.shape[1:], image_shape=None)
        got = standardize_per_device(data).clients[0]
        assert np.array_equal(got.x_train, want_train) and np.array_equal(got.x_test, want_test)


@pytest.mark.parametrize("value", ['"true"', "1", "0", '"yes"', "[true]"])
def test_standardize_must_be_a_bool(value, tmp_path):
    (tmp_path / "d.toml").write_text(f'device_id = "pi-a"\n[data]\nnpz = "d.npz"\nstandardize = {value}\n')
    with pytest.raises(ConfigError, match="data.standardize"):
        load_device_config(tmp_path / "d.toml")
    with pytest.raises(ConfigError, match="standardize must be true or false"):
        DataConfig(npz="d.npz", standardize=1)


def _save(path, rng, loc, scale, dtype=np.float32):
    x = rng.normal(loc, scale, size=(40, 6))
    x = np.clip(x, 0, 255).astype(dtype) if dtype == np.uint8 else x.astype(dtype)
    np.savez(path, x_train=x[:30], y_train=rng.integers(0, 3, 30), x_test=x[30:], y_test=rng.integers(0, 3, 10))
    return as_features(x[:30]), as_features(x[30:])


def test_the_device_standardizes_at_load_with_its_own_statistics(tmp_path, caplog):
    rng = np.random.default_rng(1)
    for name, loc, scale, dtype in (("raw", 900.0, 300.0, np.float32), ("pixels", 120.0, 60.0, np.uint8)):
        x_train, x_test = _save(tmp_path / f"{name}.npz", rng, loc, scale, dtype)  # stats after uint8 / 255
        (tmp_path / f"{name}.toml").write_text(f'device_id = "pi-a"\nstate_dir = "{tmp_path / "state"}"\n'
                                               f'[data]\nnpz = "{tmp_path / name}.npz"\nstandardize = true\n')
        with caplog.at_level(logging.INFO, logger="fedge.device"):
            loop, _ = build_device(load_device_config(tmp_path / f"{name}.toml"))  # what `fedge device run` builds
        data = loop.agent.runtime.data
        np.testing.assert_allclose(data.x_train, _loop_oracle(x_train, x_train), atol=1e-5)
        np.testing.assert_allclose(data.x_test, _loop_oracle(x_train, x_test), atol=1e-5)
        assert data.x_train.dtype == np.float32 and abs(data.x_train.mean()) < 1e-5
        assert sum("standardized its 6 features" in r.message for r in caplog.records) == 1
        caplog.clear()
    assert np.array_equal(load_local_data(tmp_path / "raw.npz").x_train, np.load(tmp_path / "raw.npz")["x_train"])


def test_a_sighup_reload_standardizes_the_new_data_with_its_own_statistics(tmp_path):
    rng = np.random.default_rng(2)
    _save(tmp_path / "d.npz", rng, 50.0, 10.0)
    runtime = DeviceRuntime("pi-1", load_local_data(tmp_path / "d.npz", True), {}, tmp_path / "state")
    x_train, x_test = _save(tmp_path / "d.npz", rng, 4000.0, 900.0)  # the new file, another scale
    previous = signal.getsignal(signal.SIGHUP)
    old = runtime.data
    try:
        install_reload(SimpleNamespace(runtime=runtime, check_in_soon=lambda: None), str(tmp_path / "d.npz"), True,
                       tmp_path / "own")
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.monotonic() + 10
        while runtime.data is old and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        signal.signal(signal.SIGHUP, previous)
    np.testing.assert_allclose(runtime.data.x_train, _loop_oracle(x_train, x_train), atol=1e-5)
    np.testing.assert_allclose(runtime.data.x_test, _loop_oracle(x_train, x_test), atol=1e-5)
    deadline = time.monotonic() + 10  # recorded (for `fedge device export`) once the new data is in use
    while not (tmp_path / "own" / "standardization.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    mean, std = recorded_standardization(tmp_path / "own")
    np.testing.assert_allclose(mean, x_train.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, x_train.astype(np.float64).std(axis=0), rtol=1e-12)


def test_the_device_records_what_it_applies_and_removes_it_when_it_stops_standardizing(tmp_path):
    x_train, _ = _save(tmp_path / "d.npz", np.random.default_rng(4), 300.0, 20.0)
    own = tmp_path / "state" / "pi-a"
    for flag in ("true", "false"):
        (tmp_path / "d.toml").write_text(f'device_id = "pi-a"\nstate_dir = "{tmp_path / "state"}"\n'
                                         f'[data]\nnpz = "{tmp_path / "d.npz"}"\nstandardize = {flag}\n')
        build_device(load_device_config(tmp_path / "d.toml"))
        if flag == "true":
            mean, std = recorded_standardization(own)
            np.testing.assert_allclose(mean, x_train.astype(np.float64).mean(axis=0), rtol=1e-12)
            np.testing.assert_allclose(std, x_train.astype(np.float64).std(axis=0), rtol=1e-12)
    assert recorded_standardization(own) is None and not (own / "standardization.npz").exists()


def test_a_value_standardized_beyond_float32_is_refused_by_name(tmp_path):
    """x_test 1e35 on a feature of training std 1e-5 standardizes to 1e40: as float32 it was inf,
    and the device evaluated NaN logits without a word. Refused at load, naming file, split and
    feature, on a real device and in the simulator alike (one formula)."""
    rng = np.random.default_rng(3)
    x_train = rng.normal(0, 1e-5, size=(20, 3)).astype(np.float32)
    x_test = np.array([[0.0, 0.0, 0.0], [0.0, 1e35, 0.0]], np.float32)
    assert np.isfinite(x_test).all() and np.abs(_loop_oracle(x_train, x_test)).max() > np.finfo(np.float32).max
    np.savez(tmp_path / "d.npz", x_train=x_train, y_train=np.zeros(20, int), x_test=x_test, y_test=np.zeros(2, int))
    with pytest.raises(DatasetError, match=r"d\.npz: x_test .*example 1, feature 1: 1e\+35 .*beyond float32"):
        load_local_data(tmp_path / "d.npz", True)
    assert np.array_equal(load_local_data(tmp_path / "d.npz").x_test, x_test)  # as saved it fits
    data = FederatedDataset("d", (ClientData("c7", x_train, np.zeros(20, np.int64), x_test, np.zeros(2, np.int64)),),
                            num_classes=2, input_shape=(3,), image_shape=None)
    with pytest.raises(DatasetError, match="device c7: x_test .*beyond float32"):
        standardize_per_device(data)
