"""Option values the `fedge` commands refuse before any work: exit 2, one line that names the
option, nothing written (the pattern of test_cli_errors.py)."""

from __future__ import annotations

import os

import pytest

from fedge.tools.cli import main

# Path("") is "." : each of these once wrote into, or read, the current folder, or took the
# empty value for "not given" and ran without it.
EMPTY_PATHS = [
    ["simulate", "--out", ""], ["simulate", "--json", ""], ["simulate", "--model", ""], ["simulate", "--config", ""],
    ["simulate", "--device-config", ""], ["simulate", "--data", " "], ["data", "split", "--out", ""],
    ["pretrain", "--out", ""], ["pretrain", "--out", "{tmp}/p", "--spec", ""],
    ["build-artifacts", "mnist-mlp-lora", ""],
    ["build-artifacts", "mnist-mlp-lora", "{tmp}/a", "--from-onnx", ""],  # read as "not given": built the SPEC
    ["device", "init", "--out", ""], ["device", "init", "--out", "{tmp}/d.toml", "--state-dir", ""],
    ["device", "probe", "--root", ""], ["device", "probe", "--config", ""], ["device", "run", "--config", ""],
    ["device", "export", "--config", "", "--out", "{tmp}/x.onnx"], ["device", "export", "--config", "{tmp}/d.toml",
                                                                    "--out", ""],
    ["coordinator", "serve", "--config", ""], ["coordinator", "privacy", "--state", ""],
    ["coordinator", "privacy", "--state-dsn", ""],  # once a TypeError traceback
    ["bench", "secagg", "--json", ""], ["bench", "scale", "--json", ""], ["bench", "train-step", "--json", ""],
    ["bench", "heterogeneity", "--json", "{tmp}/h.json", "--report", ""], ["audit", "leakage", "--json", ""],
    ["provision", "ca", "--out", ""], ["provision", "broker", "--out", ""],
    ["provision", "broker", "--out", "{tmp}/b", "--conf-dir", ""],
    ["provision", "broker", "--out", "{tmp}/b", "--data-dir", ""],
    ["provision", "identity", "--id", "d1", "--out", "{tmp}/i", "--directory", ""],
    ["provision", "device", "--id", "d1", "--out", "{tmp}/d", "--passwd-file", ""],
    ["provision", "coordinator", "--out", "{tmp}/c", "--install-dir", ""],
]


@pytest.mark.parametrize("argv", EMPTY_PATHS, ids=lambda argv: "_".join(a.strip() or "EMPTY" for a in argv))
def test_an_empty_path_is_refused_by_name(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as done:
        main([a.format(tmp=tmp_path) for a in argv])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    before = argv[next(i for i, v in enumerate(argv) if not v.strip()) - 1]
    option = before if before.startswith("-") else "outdir"  # build-artifacts SPEC OUTDIR
    assert f"argument {option}: " in err and "empty path" in err, err
    assert os.listdir(tmp_path) == []


# Options the chosen split or run does not use: each ran and said nothing, so a run (or the
# files it wrote) looked as if the value had mattered. Refused by name, as `simulate` already
# refused --alpha with another partition (tools/simulate/flag_checks.py).
@pytest.mark.parametrize("argv, words", [
    (["data", "split", "--out", "{tmp}/d", "--partition", "iid", "--alpha", "0.3"],
     ("--alpha applies to --partition dirichlet", "not --partition iid")),
    (["data", "split", "--out", "{tmp}/d", "--partition", "shards", "--alpha", "0.1"], ("not --partition shards",)),
    (["pretrain", "--out", "{tmp}/p", "--partition", "quantity", "--alpha", "0.3"],
     ("--alpha applies to --partition dirichlet", "not --partition quantity")),
    (["simulate", "--rounds", "1", "--local-epochs", "3"], ("--local-epochs applies to --baselines local",)),
    (["simulate", "--rounds", "1", "--baselines", "local", "--central-epochs", "3"],
     ("--central-epochs applies to --baselines central", "not --baselines local")),
], ids=["split-iid", "split-shards", "pretrain-quantity", "local-epochs", "central-epochs"])
def test_an_option_the_run_would_not_use_is_refused(argv, words, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedge: error: ConfigError:"), err
    assert all(w in err[0] for w in words), err[0]
    assert list(tmp_path.iterdir()) == []


def test_pretrain_partition_is_a_choice(tmp_path, capsys):
    """--partition bogus was refused only after the dataset was loaded (a DatasetError)."""
    with pytest.raises(SystemExit) as done:
        main(["pretrain", "--out", str(tmp_path / "p"), "--partition", "bogus"])
    assert done.value.code == 2 and "argument --partition: invalid choice: 'bogus'" in capsys.readouterr().err


def test_data_split_alpha_still_splits_dirichlet(tmp_path):
    """--alpha now defaults to None on the command line: a typed one still reaches the split,
    and none still means 0.1 (oracle: build_federated called directly)."""
    import numpy as np

    from fedge.tools.datasets import build_federated

    for given, alpha in ((["--alpha", "5"], 5.0), ([], 0.1)):
        out = tmp_path / str(alpha)
        assert main(["data", "split", "--dataset", "digits", "--devices", "3", "--out", str(out), *given]) == 0
        want = build_federated("digits", 3, "dirichlet", 0, alpha=alpha)
        for client in want.clients:
            assert np.array_equal(np.load(out / f"{client.client_id}.npz")["y_train"], client.y_train)


HUGE = str(10**30)


# Numbers with no upper bound: each ran (a run that could never end, or one that diverged and
# exited 0) or failed late with a message about something else.
@pytest.mark.parametrize("argv, words", [
    (["simulate", "--server-lr", "1e30"], ("ConfigError", "server_lr must be in [0, 100]", "1e+30")),
    (["simulate", "--server-lr", "101"], ("server_lr must be in [0, 100]",)),
    (["simulate", "--rounds", HUGE], ("--rounds 1000000000000000000000000000000", "at most 1,000,000")),
    (["simulate", "--personalization", "finetune", "--finetune-steps", HUGE], ("--finetune-steps", "at most")),
    (["simulate", "--new-devices", "1", "--new-device-steps", HUGE], ("--new-device-steps", "at most")),
    (["simulate", "--baselines", "local", "--local-epochs", HUGE], ("--local-epochs", "at most")),
    (["simulate", "--baselines", "central", "--central-epochs", HUGE], ("--central-epochs", "at most")),
    (["simulate", "--dataset", "synthetic", "--beta", "inf"], ("ConfigError", "--beta inf", "finite")),
    (["simulate", "--dataset", "synthetic", "--alpha", "inf"], ("ConfigError", "--alpha inf", "finite")),
    (["pretrain", "--out", "{tmp}/p", "--epochs", HUGE], ("ConfigError", "--epochs", "at most 1,000,000")),
    (["pretrain", "--out", "{tmp}/p", "--weight-decay", "1e300"], ("ConfigError", "--weight-decay", "[0, 1e+06]")),
], ids=["server-lr-1e30", "server-lr-101", "rounds", "finetune-steps", "new-device-steps", "local-epochs",
        "central-epochs", "synthetic-beta-inf", "synthetic-alpha-inf", "pretrain-epochs", "pretrain-weight-decay"])
def test_a_number_past_its_bound_is_refused_before_the_run(argv, words, tmp_path, capsys):
    rounds = ["--rounds", "1"] if argv[0] == "simulate" and "--rounds" not in argv else []
    assert main([*[a.format(tmp=tmp_path) for a in argv], *rounds]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedge: error:"), err
    assert all(w in err[0] for w in words), err[0]
    assert list(tmp_path.iterdir()) == []  # pretrain once claimed --out before training for ever


def test_the_server_lr_bound_holds_for_a_config_file():
    """The bound sits in CoordinatorConfig, so `coordinator serve`'s TOML gets it too; 100 itself is allowed."""
    from fedge.coordinator.config import MAX_SERVER_LR, CoordinatorConfig
    from fedge.edge_runtime.kernel.errors import ConfigError

    assert CoordinatorConfig(server_lr=MAX_SERVER_LR).server_lr == 100.0
    for bad in (1e30, float("inf"), float("nan"), -1.0):
        with pytest.raises(ConfigError, match="server_lr"):
            CoordinatorConfig(server_lr=bad)


@pytest.mark.parametrize("argv, words", [
    (["--rounds", "0"], ("--devices and --rounds must be >= 1",)),
    (["--rounds", HUGE], ("--rounds", "at most 1,000,000")),
    (["--guard-fraction", "2"], ("guard_fraction 2.0",)),
    (["--fractions", "nan"], ("fraction must be in (0, 1)", "nan")),
    (["--fractions", "a,b"], ("--fractions 'a,b'",)),  # once a ValueError traceback
], ids=["rounds-0", "rounds-huge", "guard-fraction-2", "fractions-nan", "fractions-text"])
def test_a_robustness_grid_every_cell_would_fail_is_refused(argv, words, tmp_path, capsys):
    """Each ran every cell into the same error (or, --fractions nan, ran on), then wrote the JSON
    and its report of errors and exited 1: now a usage error before any cell runs."""
    with pytest.raises(SystemExit) as done:
        main(["bench", "robustness", "--quick", "--json", str(tmp_path / "r.json"), *argv])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("fedge bench robustness: error:") and all(w in err for w in words), err
    assert list(tmp_path.iterdir()) == []


# A count of 10**30 (any past MAX_COUNT, 1,000,000): each ran for ever, or ended in numpy's
# "Maximum allowed dimension exceeded" / an OverflowError traceback.
@pytest.mark.parametrize("argv, words", [
    (["bench", "secagg", "--devices", HUGE, "--dimension", "10", "--repeats", "1"], ("--devices", "at most 1,000,000")),
    (["bench", "screening", "--repeats", HUGE], ("--repeats", "at most 1,000,000")),
    (["bench", "train-step", "--steps", HUGE], ("--steps", "at most 1,000,000")),
    (["bench", "scale", "--sizes", HUGE], ("--sizes", "at most 1,000,000")),
    (["bench", "privacy", "--quick", "--devices", HUGE], ("--devices", "at most 1,000,000")),
    (["audit", "leakage", "--devices", HUGE], ("--devices", "at most 1,000,000")),
], ids=["secagg", "screening", "train-step", "scale", "privacy", "audit"])
def test_a_count_past_the_cap_is_a_usage_error(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--json", str(tmp_path / "x.json")])
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error:" in err and all(w in err for w in words), err
    assert list(tmp_path.iterdir()) == []


def test_simulate_synthetic_devices_past_the_cap(capsys):
    """--dataset synthetic takes any number of devices: 10**30 was numpy's traceback."""
    assert main(["simulate", "--dataset", "synthetic", "--devices", HUGE, "--rounds", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fedge: error: ConfigError: --devices {HUGE}: at most 1,000,000"], err


@pytest.mark.parametrize("argv, words", [(["--rounds", HUGE], "error: need rounds"),
                                         (["--seed", "-1"], "error: argument --seed: -1")], ids=["rounds", "seed"])
def test_a_heterogeneity_grid_no_job_could_run_writes_nothing(argv, words, tmp_path, capsys):
    """Refused only inside the first job, after the report folder's .fedge-report.json was written."""
    with pytest.raises(SystemExit) as done:
        main(["bench", "heterogeneity", "--quick", "--json", str(tmp_path / "h.json"), *argv])
    assert done.value.code == 2
    assert f"fedge bench heterogeneity: {words}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
