"""What a simulation says about itself: the training loss per round (table and run.json),
a run that commits nothing fails loudly, and run.json records what actually ran."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from fedge.tools.cli import main


def test_train_loss_in_the_table_and_run_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["simulate", "--dataset", "digits", "--devices", "4", "--rounds", "2", "--clients-per-round", "3",
                 "--json", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    header = next(line for line in table if line.split()[:2] == ["round", "loss"])
    rows = json.loads(out.read_text())["rounds"]
    for row in rows:
        assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
        line = table[table.index(header) + row["round"]]
        assert line.split()[:2] == [str(row["round"]), f"{row['train_loss']:.4f}"]
    assert rows[1]["train_loss"] < rows[0]["train_loss"] * 1.5  # a sane value, not a sum over steps


def _blobs(folder, clients=4, scale=1.0, label_offset=0, seed=0):
    """Per-client npz files of separable Gaussian blobs, features times `scale`."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, 12))
    folder.mkdir()
    for c in range(clients):
        def draw(n):
            y = rng.integers(0, 3, size=n)
            return (scale * (centers[y] + 0.3 * rng.normal(size=(n, 12)))).astype(np.float32), y + label_offset
        (x_train, y_train), (x_test, y_test) = draw(40), draw(10)
        np.savez(folder / f"site-{c}.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return folder


def test_unstandardized_data_warns_on_load_and_a_run_without_commits_fails(tmp_path, capsys):
    data = _blobs(tmp_path / "raw", scale=4000.0)
    out = tmp_path / "run.json"
    assert main(["simulate", "--data", str(data), "--rounds", "2", "--lr", "0.5", "--json", str(out), "--quiet",
                 "--no-standardize"]) == 1
    text = capsys.readouterr().err  # main sets up logging on stderr, as a user sees it
    assert "far from standardized" in text and "(x - mean) / std" in text
    err = text.strip().splitlines()
    assert err[-1].startswith("fedge: error: no round committed in 2 rounds"), err
    assert "diverged" in err[-1] and "standardize the features" in err[-1]
    doc = json.loads(out.read_text())  # the record of the failed run is still written
    assert not any(r["committed"] for r in doc["rounds"])
    assert any("far from standardized" in f for f in doc["config"]["data"]["findings"])
    y_test = np.concatenate([np.load(f)["y_test"] for f in sorted(data.glob("*.npz"))])
    assert doc["config"]["data"]["most_common_test_share"] == pytest.approx(np.bincount(y_test).max() / len(y_test))
    assert doc["summary"]["constant_guess"] is None  # no round committed: failure_cause speaks instead


def test_a_global_model_no_better_than_a_constant_guess_is_named():
    """Digits with features 0..8 (a probe's data) trained to 0.087 with every round committed."""
    from types import SimpleNamespace

    from fedge.tools.simulate.report import constant_guess

    def result(accuracy, share, committed=True):
        return SimpleNamespace(summary={"final": {"final_global_accuracy": accuracy}},
                               config={"data": {"most_common_test_share": share}}, rounds=[{"committed": committed}])

    assert "accuracy 0.087 is no better than always predicting the most common label (0.127)" in \
        constant_guess(result(0.087, 0.127))
    assert "no better" in constant_guess(result(0.13, 0.127))  # within a point of it
    assert constant_guess(result(0.2, 0.127)) is None
    assert constant_guess(result(0.087, 0.127, committed=False)) is None
    assert constant_guess(result(1.0, 1.0)) is None  # one label in the test data: nothing to warn of


def test_a_centralized_baseline_no_better_than_a_constant_guess_is_named():
    """Digits with eight constant features of 3 (no "far from standardized" finding): the pooled
    run collapsed to 0.101 in its first epoch and stayed there, so its loss never rose at the
    end and it was not `unstable`; the summary printed it as the ceiling beside a federated 0.541."""
    from types import SimpleNamespace

    from fedge.tools.simulate.report import format_summary

    def summary(central, share=0.118, unstable=False):
        final = {"final_global_accuracy": 0.541, "final_personalized_accuracy_mean": 0.43,
                 "final_personalized_accuracy_min": 0.37, "total_bytes_up": 1, "total_bytes_up_dense": 4,
                 "uplink_compression": 4.0}
        return format_summary(SimpleNamespace(
            summary={"final": final}, config={"data": {"most_common_test_share": share}}, new_devices=None,
            baselines={"central": {"accuracy": central, "epochs": 8, "epoch_losses": [6.69, 4.61, 4.6],
                                   "unstable": unstable}}))

    assert ("warning: the centralized baseline's accuracy 0.101 is no better than always predicting the most "
            "common label (0.118)") in summary(0.101)
    assert "no better" in summary(0.125)  # within a point of it
    assert "warning: the centralized" not in summary(0.9)
    assert "no better" not in summary(1.0, share=1.0)  # one label in the test data: nothing to learn
    assert "unstable" in summary(0.9, unstable=True) and "no better" not in summary(0.9, unstable=True)


def test_standardized_data_does_not_warn(tmp_path, caplog):
    from fedge.tools.datasets import load_npz_dir

    load_npz_dir(_blobs(tmp_path / "ok"))
    assert "standardized" not in caplog.text and "never appear" not in caplog.text
    load_npz_dir(_blobs(tmp_path / "pixels", scale=255.0))  # the check has teeth: 0..255-like scale warns
    assert "far from standardized" in caplog.text


@pytest.mark.parametrize("flags", [["--devices", "7"], ["--partition", "iid"], ["--alpha", "0.5"],
                                   ["--dataset", "digits", "--classes-per-client", "3"]])
def test_split_flags_are_refused_with_data(flags, tmp_path, capsys):
    data = _blobs(tmp_path / "d")
    assert main(["simulate", "--data", str(data), "--rounds", "1", "--quiet", *flags]) == 2
    err = capsys.readouterr().err
    assert "do not apply with --data" in err and all(f in err for f in flags if f.startswith("--"))


@pytest.mark.parametrize("flag", ["--devices", "--dataset", "--partition", "--classes-per-client"])
def test_a_split_flag_typed_at_its_default_is_refused_with_data(flag, tmp_path, capsys):
    """`--devices 20 --data DIR` once ran (the check compared values with the defaults), while
    `--devices 7 --data DIR` was refused; the value typed here is the default SimConfig holds."""
    from fedge.tools.simulate.config import SimConfig

    default = str(getattr(SimConfig, flag[2:].replace("-", "_")))
    assert main(["simulate", "--data", str(_blobs(tmp_path / "d")), "--rounds", "1", "--quiet", flag, default]) == 2
    err = capsys.readouterr().err
    assert "do not apply with --data" in err and f"{flag} do not apply" in err


def test_run_json_records_what_ran_and_labels_never_trained(tmp_path, capsys):
    data = _blobs(tmp_path / "clinic", clients=5, label_offset=1)  # 1-based labels: class 0 is never seen
    out = tmp_path / "run.json"
    assert main(["simulate", "--data", str(data), "--rounds", "1", "--json", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "label(s) 0 never appear in any y_train" in err and "1-based" in err
    config = json.loads(out.read_text())["config"]
    assert (config["devices"], config["dataset"], config["partition"]) == (5, "clinic", "files")
    assert config["alpha"] is None and config["classes_per_client"] is None
    assert config["data"]["num_classes"] == 4 and config["data"]["devices"] == 5
    assert config["data"]["train_examples"] == 5 * 40
    assert any("never appear" in f for f in config["data"]["findings"])


def test_sparse_label_codes_are_not_called_1_based(tmp_path):
    """Labels {3, 7, 9} were told "1-based labels? subtract 1", which leaves them as sparse."""
    from fedge.tools.datasets import data_findings, load_npz_dir

    codes = load_npz_dir(_blobs(tmp_path / "codes", label_offset=0))
    codes = replace(codes, clients=tuple(replace(c, y_train=np.array([3, 7, 9])[c.y_train]) for c in codes.clients),
                    num_classes=10)
    (finding,) = data_findings(codes)
    assert finding.startswith("label(s) 0, 1, 2, 4, 5, 6, 8 never appear") and "1-based" not in finding
    assert "map them to 0..K-1" in finding
    one_based = load_npz_dir(_blobs(tmp_path / "one", label_offset=1))
    assert "1-based" in data_findings(one_based)[0]


def test_a_model_that_cannot_take_the_data_is_refused_before_any_device_trains(tmp_path):
    """The probe's cases: digits (64 values) under the 784-input MNIST spec, and labels 1..10
    under a 10-class model; both once failed inside ONNX Runtime with a raw traceback."""
    from fedge.edge_runtime.kernel.errors import ConfigError
    from fedge.models.spec import mlp_spec
    from fedge.tools.datasets import load_npz_dir
    from fedge.tools.simulate.model_choice import check_fits

    data = load_npz_dir(_blobs(tmp_path / "d"))
    width, classes = data.input_shape[0], data.num_classes
    check_fits(data, mlp_spec(width, classes, hidden=(8,)))
    with pytest.raises(ConfigError, match=f"takes {width + 1} values per example .* the data has {width}"):
        check_fits(data, mlp_spec(width + 1, classes, hidden=(8,)))
    with pytest.raises(ConfigError, match=f"labels go up to {classes - 1}, .* has {classes - 1} classes"):
        check_fits(data, mlp_spec(width, classes - 1, hidden=(8,)))
