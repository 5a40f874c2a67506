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
