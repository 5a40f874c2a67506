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
