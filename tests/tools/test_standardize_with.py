"""`fedge simulate --standardize-with fleet|device`: whose statistics standardizing uses. The
default is the fleet's pooled ones, and each device's own with privacy or secure aggregation on
(the pooled statistics would be released outside the DP accountant and the masked sum)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedge.coordinator.config import CoordinatorConfig
from fedge.coordinator.dp.config import PrivacyConfig
from fedge.edge_runtime.kernel.errors import ConfigError
from fedge.tools.cli import main
from fedge.tools.datasets import load_npz_dir
from fedge.tools.simulate.config import SimConfig
from fedge.tools.standardizing import fleet_statistics, standardize_per_device
from tests.tools.test_run_outcome import _blobs


def test_the_default_is_the_fleet_and_each_device_with_privacy():
    assert SimConfig().standardize_using == "fleet"
    private = CoordinatorConfig(aggregator="mean", weighting="equal",
                                privacy=PrivacyConfig(enabled=True, noise_multiplier=1.0))
    assert SimConfig(coordinator=private).standardize_using == "device"
    assert SimConfig(coordinator=private, standardize_with="fleet").standardize_using == "fleet"


@pytest.mark.parametrize("kwargs, named", [
    ({"standardize_with": "pooled"}, "--standardize-with 'pooled'"),
    ({"standardize_with": "fleet", "standardize": False}, "--standardize-with with --no-standardize"),
])
def test_a_bad_choice_is_refused_by_name(kwargs, named):
    with pytest.raises(ConfigError, match=named):
        SimConfig(**kwargs)


def test_the_cli_refuses_an_unknown_choice(capsys):
    with pytest.raises(SystemExit):
        main(["simulate", "--standardize-with", "pooled"])
    assert "invalid choice: 'pooled'" in capsys.readouterr().err


def test_run_json_says_whose_statistics_ran_and_the_devices_trained_on_them(tmp_path):
    """Oracle: the fleet's statistics (pooled np.mean / np.std, test_standardize.py checks them)
    and each device's own (the device formula) applied to the folder as saved."""
    raw = _blobs(tmp_path / "raw", scale=4000.0)
    saved = load_npz_dir(raw, standardize=False)
    mean, std = fleet_statistics(saved)
    for using in ("fleet", "device"):
        data = load_npz_dir(raw, standardize=None, using=using)
        assert data.standardizing.on and data.standardizing.using == using
        want = (standardize_per_device(saved).clients if using == "device" else
                [(c.x_train - mean) / std for c in saved.clients])
        for got, w in zip(data.clients, want, strict=True):
            np.testing.assert_allclose(got.x_train, w if using == "fleet" else w.x_train, rtol=1e-5, atol=1e-5)
        out = tmp_path / f"{using}.json"
        assert main(["simulate", "--data", str(raw), "--rounds", "1", "--quiet", "--json", str(out),
                     "--standardize-with", using]) == 0
        assert json.loads(out.read_text())["config"]["standardize_with"] == using
    out = tmp_path / "off.json"
    assert main(["simulate", "--data", str(raw), "--rounds", "1", "--quiet", "--json", str(out),
                 "--no-standardize"]) in (0, 1)  # raw: some tasks may diverge
    assert json.loads(out.read_text())["config"]["standardize_with"] is None


def test_held_out_new_devices_add_nothing_to_the_fleet_statistics_and_are_standardized_with_them(tmp_path):
    """--new-devices: the last files join after training, as a device given the fleet's file
    would. Oracle: fleet_statistics of the training files as saved, applied to every file."""
    raw = _blobs(tmp_path / "raw", scale=4000.0)
    saved = load_npz_dir(raw, standardize=False)
    mean, std = fleet_statistics(saved.subset(0, len(saved.clients) - 1))
    assert not np.allclose(mean, fleet_statistics(saved)[0])  # the held-out file would move them
    data = load_npz_dir(raw, standardize=True, held_out=1)
    for got, c in zip(data.clients, saved.clients, strict=True):
        np.testing.assert_allclose(got.x_train, (c.x_train - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.x_test, (c.x_test - mean) / std, rtol=1e-5, atol=1e-5)


def test_a_standardized_folder_on_two_scales_uses_each_devices_own_statistics(tmp_path, caplog):
    """Digits x 255 / 16 over 4 files, two saved as uint8 (read as x / 255) and two as float32
    (read as saved, 255 times that scale): pooled, the uint8 devices' features came out nearly
    constant (0.508 global against 0.944). Oracle: standardize_per_device of the folder as read."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = np.round(x * 255 / 16)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(4):
        part = slice(i * 400, i * 400 + 400)
        xs = x[part].astype(np.uint8 if i < 2 else np.float32)
        np.savez(folder / f"d{i}.npz", x_train=xs[:300], y_train=y[part][:300], x_test=xs[300:], y_test=y[part][300:])
    as_read = load_npz_dir(folder, standardize=False)
    data = load_npz_dir(folder, standardize=True)
    assert data.standardizing.on and data.standardizing.using == "device"
    assert "each device standardizes with its own statistics, not the fleet's" in caplog.text
    for got, want in zip(data.clients, standardize_per_device(as_read).clients, strict=True):
        np.testing.assert_array_equal(got.x_train, want.x_train)


def test_standardize_with_needs_standardize_on_a_shipped_dataset(capsys):
    assert main(["simulate", "--dataset", "digits", "--standardize-with", "device", "--rounds", "1"]) == 2
    assert "--standardize-with needs --standardize" in capsys.readouterr().err


@pytest.mark.parametrize("using, says", [
    ("fleet", "[data] statistics to the fleet's file (fedge data combine-moments)"),
    ("device", "with its own training split's mean and std"),
])
def test_the_load_warning_says_whose_statistics_and_what_real_devices_need(tmp_path, caplog, using, says):
    load_npz_dir(_blobs(tmp_path / "raw", scale=4000.0), standardize=None, using=using)
    (line,) = [m for m in caplog.messages if "far from standardized" in m]
    assert says in line and "[data] standardize = true" in line


@pytest.mark.parametrize("held", [4, 5])
def test_holding_every_file_out_is_refused_by_name_before_any_statistics(tmp_path, held):
    """All 4 files held out said "no moments to combine ... fedge device moments"; more than 4
    pooled the wrong files (a negative slice) before fleet.prepare refused the run."""
    raw = _blobs(tmp_path / "raw", scale=4000.0)
    assert len(load_npz_dir(raw).clients) == 4
    with pytest.raises(ConfigError, match=f"--new-devices {held}: the data has only 4 clients; some must train"):
        load_npz_dir(raw, standardize=True, held_out=held)


def test_an_explicit_fleet_with_privacy_is_warned_about(caplog):
    """The default with privacy is each device's own; asking for the fleet's there releases the
    pooled statistics outside the DP accountant: allowed (the operator's call), said once."""
    from fedge.tools.simulate.fleet import load_data

    private = CoordinatorConfig(aggregator="mean", weighting="equal",
                                privacy=PrivacyConfig(enabled=True, noise_multiplier=1.0))
    load_data(SimConfig(dataset="digits", devices=3, standardize=True, standardize_with="fleet", coordinator=private))
    assert "--standardize-with fleet with privacy or secure aggregation on" in caplog.text
    caplog.clear()
    load_data(SimConfig(dataset="digits", devices=3, standardize=True, coordinator=private))
    assert "with privacy or secure aggregation on" not in caplog.text
