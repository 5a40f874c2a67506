"""`fedge simulate --data` standardizes far-from-standardized features by default (auto): a probe
(benchmarks/results/2026-12-06-unseen-data) found raw wine, breast cancer and 1e4-scale blobs
ending with no round committed, and sklearn's raw digits (0..16) at the constant guess, where the
same runs with --standardize reached 0.91-0.99; the loader only warned."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fedge.tools.cli import main
from fedge.tools.datasets import load_npz_dir
from fedge.tools.simulate.config import SimConfig
from fedge.tools.simulate.fleet import load_data
from fedge.tools.standardizing import standardize_with_fleet
from tests.tools.test_run_outcome import _blobs


def _simulate(tmp_path, folder, name, *flags):
    out = tmp_path / name / "run.json"
    code = main(["simulate", "--data", str(folder), "--rounds", "1", "--json", str(out), "--quiet", *flags])
    return code, json.loads(out.read_text())


def _raw(folder):
    """Oracle: the files as saved, read with numpy alone."""
    return {f.stem: np.load(f) for f in sorted(folder.glob("*.npz"))}


def test_auto_standardizes_flagged_features_on_each_device(tmp_path, capsys):
    raw = _blobs(tmp_path / "raw", scale=4000.0)
    code, doc = _simulate(tmp_path, raw, "auto")
    assert code == 0 and all(r["committed"] for r in doc["rounds"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "far from standardized" in ln]
    assert len(lines) == 1 and "--no-standardize" in lines[0] and "as they are will likely diverge" in lines[0]
    assert "on real devices set [data] standardize = true" in lines[0]  # what to deploy to train as this run did
    assert doc["config"]["standardize"] is True
    assert doc["config"]["standardize_why"].startswith("auto: features are far from standardized")
    assert not any("far from standardized" in f for f in doc["config"]["data"]["findings"])
    oracle = standardize_with_fleet(load_npz_dir(raw, standardize=False))
    for got, want in zip(load_data(SimConfig(data_dir=str(raw))).clients, oracle.clients, strict=True):
        assert np.array_equal(got.x_train, want.x_train) and np.array_equal(got.x_test, want.x_test)


def test_auto_standardizes_features_that_barely_vary(tmp_path):
    tiny = _blobs(tmp_path / "tiny", scale=1e-4)
    data = load_data(SimConfig(data_dir=str(tiny)))
    assert data.standardizing.on and "barely vary" in data.standardizing.why
    for got, want in zip(data.clients, standardize_with_fleet(load_npz_dir(tiny)).clients, strict=True):
        assert np.array_equal(got.x_train, want.x_train)


def test_auto_leaves_unflagged_features_as_saved(tmp_path, capsys):
    """Per-device standardization costs accuracy on data already on a unit scale (a device that
    holds one class: 0.98 -> 0.62-0.78 in the probe), so auto leaves it alone, bit for bit."""
    ok = _blobs(tmp_path / "ok")
    data = load_data(SimConfig(data_dir=str(ok)))
    for c in data.clients:
        saved = _raw(ok)[c.client_id]
        assert np.array_equal(c.x_train, saved["x_train"]) and np.array_equal(c.x_test, saved["x_test"])
    code, doc = _simulate(tmp_path, ok, "auto")
    assert code == 0 and "standardiz" not in capsys.readouterr().err
    assert doc["config"]["standardize"] is False
    assert doc["config"]["standardize_why"] == "auto: the features are not far from standardized"


def test_no_standardize_trains_flagged_features_as_saved(tmp_path, capsys):
    raw = _blobs(tmp_path / "raw", scale=4000.0)
    data = load_data(SimConfig(data_dir=str(raw), standardize=False))
    for c in data.clients:
        assert np.array_equal(c.x_train, _raw(raw)[c.client_id]["x_train"])
    code, doc = _simulate(tmp_path, raw, "off", "--no-standardize")
    assert code in (0, 1)  # raw: some tasks may diverge
    assert doc["config"]["standardize"] is False and doc["config"]["standardize_why"] == "--no-standardize"
    (finding,) = [f for f in doc["config"]["data"]["findings"] if "far from standardized" in f]
    assert "unless --no-standardize is given" in finding  # the hint names the flag this run gave
    forced = _simulate(tmp_path, raw, "on", "--standardize")[1]["config"]
    assert forced["standardize"] is True and forced["standardize_why"] == "--standardize"


def test_standardize_and_no_standardize_together_are_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", "--data", str(_blobs(tmp_path / "d")), "--rounds", "1", "--quiet", "--standardize",
              "--no-standardize"])
    assert exc.value.code == 2
    assert "argument --no-standardize: not allowed with argument --standardize" in capsys.readouterr().err


def test_shipped_data_and_the_guard_set_are_untouched_by_auto():
    """Shipped datasets are scaled to [0, 1] already; and auto never trips guard_fraction's refusal
    of per-device standardization (a guard set of raw inputs would not stand for the devices')."""
    from fedge.tools.simulate.config import sim_config

    cfg = sim_config(dataset="digits", devices=4, partition="iid", guard_fraction=0.1)
    assert cfg.standardize is None  # auto
    data = load_data(cfg)
    assert data.standardizing is None and max(c.x_train.max() for c in data.clients) <= 1.0


def test_no_standardize_without_data_is_refused(capsys):
    assert main(["simulate", "--dataset", "digits", "--devices", "4", "--rounds", "1", "--quiet",
                 "--no-standardize"]) == 2
    assert "--no-standardize applies to --data" in capsys.readouterr().err


def test_the_heterogeneity_bench_decides_its_data_folder_as_simulate_does(tmp_path, capsys):
    """`fedge bench heterogeneity --data DIR` builds its jobs' SimConfigs itself: the folder's
    features get the same auto decision, and --no-standardize reaches them."""

    from fedge.tools.bench.hetero_grid import _data_for, build_jobs
    from fedge.tools.bench.heterogeneity import main as bench
    from tests.tools.test_heterogeneity import TINY

    raw = _blobs(tmp_path / "raw", scale=4000.0)
    oracle = standardize_with_fleet(load_npz_dir(raw)).clients

    def given(grid):
        (job,) = [j for j in build_jobs(grid, data_dir=str(raw)) if j.kind == "baselines" and j.cfg.data_dir]
        return _data_for(job.cfg)

    auto = given(TINY)
    assert auto.standardizing.on and all(np.array_equal(a.x_train, b.x_train) for a, b in zip(auto.clients, oracle))
    off = given(replace(TINY, data_standardize=False))
    assert not off.standardizing.on and np.array_equal(off.clients[0].x_train, _raw(raw)["site-0"]["x_train"])
    with pytest.raises(SystemExit):
        bench(["--json", str(tmp_path / "h.json"), "--no-standardize"])
    assert "apply to --data DIR" in capsys.readouterr().err


def test_a_finding_left_after_standardizing_does_not_ask_for_it(tmp_path, caplog):
    """Features constant within each device (a per-site offset, 1000 or 2000) are flagged, auto
    with each device's own statistics centres them to 0 on every device, and they still carry
    nothing: the finding says the devices standardized them, not that the user should."""
    folder = tmp_path / "sites"
    folder.mkdir()
    for i, level in enumerate((1000.0, 2000.0)):
        x = np.full((6, 3), level, np.float32)
        np.savez(folder / f"s{i}.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.arange(2))
    data = load_npz_dir(folder, standardize=None, using="device")
    assert data.standardizing.on and all(np.all(c.x_train == 0) for c in data.clients)
    (after,) = [ln for ln in caplog.messages if "barely vary" in ln]
    assert "even after each device standardized them" in after and "Standardize each feature" not in after


def test_a_constant_guess_after_standardizing_does_not_ask_for_it():
    from types import SimpleNamespace

    from fedge.tools.simulate.report import constant_guess

    def result(standardize):
        return SimpleNamespace(summary={"final": {"final_global_accuracy": 0.1}}, rounds=[{"committed": True}],
                               config={"standardize": standardize, "data": {"most_common_test_share": 0.1}})

    assert "--standardize" in constant_guess(result(False))
    assert "--standardize" not in constant_guess(result(True)) and "standardized its features already" in \
        constant_guess(result(True))


@pytest.mark.parametrize("using", ["fleet", "device"])
def test_a_value_that_standardizing_puts_past_float32_is_refused_by_name(tmp_path, using):
    """A feature that barely varies in a device's training split (0 or 1e-5) and holds 1e34 in its
    test split (finite in float32): standardized, 1e34 / 5e-6 became inf, and the run stopped on
    "data: contains NaN or Inf; clean the data" (edge_runtime/model_runtime.py) though the files
    hold none, after a RuntimeWarning from numpy. Oracle: the value and position written here."""
    import warnings

    from fedge.edge_runtime.kernel.errors import DatasetError

    folder = _blobs(tmp_path / "raw", scale=4000.0)  # flagged: auto standardizes it
    for site in sorted(folder.glob("*.npz")):  # on every device, so the fleet's std is as small
        arrays = dict(np.load(site))
        arrays["x_train"][:, 1] = np.where(np.arange(len(arrays["x_train"])) % 2, 1e-5, 0.0)
        if site.stem == "site-1":
            arrays["x_test"][0, 1] = 1e34
        np.savez(site, **arrays)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        named = (r"device site-1: x_test \(standardized\): example 0, feature 1: 1e\+34 "
                 r".*beyond float32.*--no-standardize")
        with pytest.raises(DatasetError, match=named):
            load_npz_dir(folder, standardize=None, using=using)


@pytest.mark.parametrize("value", ["auto", "no", "false", 0, 1])
def test_a_standardize_that_is_not_true_false_or_none_is_refused(value):
    """SimConfig(standardize="no") (or "auto", the word for None) was truthy and standardized every
    device, and 0 read as --no-standardize; the three values it takes are written here."""
    from fedge.edge_runtime.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match=r"standardize .*: True \(--standardize\), False"):
        SimConfig(data_dir="d", standardize=value)
    assert [SimConfig(data_dir="d", standardize=v).standardize for v in (True, False, None)] == [True, False, None]


def test_the_heterogeneity_json_records_what_auto_decided_for_its_data_folder(tmp_path, monkeypatch):
    """`fedge bench heterogeneity --data DIR` wrote grid.data_standardize, null for auto, and not
    what ran: its JSON could not tell a standardized folder from one trained as saved, where
    run.json says both. The jobs and the report are stubbed (the decision is made before them).
    Oracle: the decision load_npz_dir makes for the folder alone."""
    from fedge.tools.bench import hetero_report, heterogeneity
    from tests.tools.test_heterogeneity import TINY

    monkeypatch.setattr(heterogeneity, "_run_all", lambda jobs, workers, log: [])
    monkeypatch.setattr(hetero_report, "write_report", lambda doc, folder: None)
    raw = _blobs(tmp_path / "raw", scale=4000.0)
    grid = replace(TINY, pretrained_partitions=())
    doc = heterogeneity.run(grid, tmp_path / "h.json", tmp_path / "report", data_dir=str(raw), log=lambda line: None)
    want = load_npz_dir(raw, standardize=None).standardizing
    assert doc["grid"]["data_standardize"] is None  # what was asked: auto
    written = json.loads((tmp_path / "h.json").read_text())["data_standardize"]
    assert written == {"standardize": True, "standardize_why": want.why, "standardize_with": "fleet",
                       "divided_by_255": False}
    assert want.why.startswith("auto: features")
    off = heterogeneity.run(replace(grid, data_standardize=False), tmp_path / "o.json", tmp_path / "report",
                            data_dir=str(raw), log=lambda line: None)
    assert off["data_standardize"] == {"standardize": False, "standardize_why": "--no-standardize",
                                       "standardize_with": None, "divided_by_255": False}
    pixels = tmp_path / "pixels"  # float32 0..255: read as x / 255, which run.json records as divided_by_255
    pixels.mkdir()
    for i, x in enumerate(np.random.default_rng(0).integers(0, 256, (2, 10, 6)).astype(np.float32)):
        np.savez(pixels / f"d{i}.npz", x_train=x[:7], y_train=np.arange(7) % 2, x_test=x[7:], y_test=np.arange(3) % 2)
    read = load_npz_dir(pixels, standardize=None).standardizing
    assert heterogeneity.run(grid, tmp_path / "p.json", tmp_path / "report", data_dir=str(pixels),
                             log=lambda line: None)["data_standardize"] == {
        "standardize": False, "standardize_why": read.why, "standardize_with": None, "divided_by_255": True}
    assert heterogeneity.run(grid, tmp_path / "n.json", tmp_path / "report", log=lambda line: None)[
        "data_standardize"] is None  # no --data DIR: nothing to record
