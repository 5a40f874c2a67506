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
    ["device", "init", "--out", ""], ["device", "init", "--out", "{tmp}/d.toml", "--state-dir", ""],
    ["device", "probe", "--root", ""], ["device", "probe", "--config", ""], ["device", "run", "--config", ""],
    ["device", "export", "--config", "", "--out", "{tmp}/x.onnx"], ["device", "export", "--config", "{tmp}/d.toml",
                                                                    "--out", ""],
    ["coordinator", "serve", "--config", ""], ["coordinator", "privacy", "--state", ""],
    ["coordinator", "privacy", "--state-dsn", ""],  # once a TypeError traceback
    ["bench", "secagg", "--json", ""], ["bench", "scale", "--json", ""], ["bench", "train-step", "--json", ""],
    ["bench", "heterogeneity", "--json", "{tmp}/h.json", "--report", ""], ["audit", "leakage", "--json", ""],
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
