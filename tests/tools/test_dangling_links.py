"""An output path that is, or sits under, a symlink to nothing (the red-team pass of 2026-12-07).
exists() is False for such a link, so every output check passed it: `bench screening --json LINK`
and `audit leakage --json LINK` ran, then replaced the user's link with their JSON; `simulate
--out LINK` (and `bench robustness --json LINK/x.json`) ran the whole job and ended in a bare
`FileExistsError` from the mkdir; `device init --out LINK` replaced the link without --force.
Each is refused now before anything runs, and the link is left as it was."""

from __future__ import annotations

import os

import pytest

from fedge.tools.beside_json import output_file_problem
from fedge.tools.cli import main


@pytest.fixture
def link(tmp_path):
    """user/dangling -> tmp/nowhere (absent)."""
    (tmp_path / "user").mkdir()
    path = tmp_path / "user" / "dangling"
    path.symlink_to(tmp_path / "nowhere")
    return path


def _untouched(link, tmp_path):
    return link.is_symlink() and os.readlink(link) == str(tmp_path / "nowhere") and not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("below", ["", "run.json", "deeper/run.json"])
def test_the_output_check_names_a_link_to_nothing(link, tmp_path, below):
    target = link / below if below else link
    assert output_file_problem(target) == (f"{link} is a symlink to {tmp_path / 'nowhere'}, which does not exist: "
                                           "name a real folder or file")


@pytest.mark.parametrize("argv", [["bench", "screening", "--json", "{link}"],  # replaced the link after the run
                                  ["audit", "leakage", "--json", "{link}"],
                                  ["bench", "robustness", "--quick", "--json", "{link}/x.json"]])  # ran the grid
def test_a_benchmark_refuses_a_json_path_through_a_link_to_nothing(link, tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as done:  # an argparse type: a usage error, nothing run
        main([a.replace("{link}", str(link)) for a in argv])
    assert done.value.code == 2 and "which does not exist" in capsys.readouterr().err
    assert _untouched(link, tmp_path)


@pytest.mark.parametrize("flag, below", [("--out", ""), ("--json", ""), ("--json", "/run.json")])
def test_simulate_refuses_a_link_to_nothing_before_it_runs(link, tmp_path, capsys, flag, below):
    argv = ["simulate", "--dataset", "digits", "--devices", "2", "--rounds", "1", "--quiet", flag, f"{link}{below}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "FileExistsError" not in err and f"{link} is a symlink" in err, err
    assert _untouched(link, tmp_path)


@pytest.mark.parametrize("argv", [["build-artifacts", "mnist-mlp-lora", "{out}", "--ort-training", "no"],
                                  ["data", "split", "--dataset", "digits", "--devices", "2", "--out", "{out}"],
                                  ["pretrain", "--dataset", "digits", "--devices", "2", "--epochs", "1",
                                   "--out", "{out}"]])
@pytest.mark.parametrize("below", ["", "/sub"])
def test_an_output_folder_through_a_link_to_nothing_is_named(link, tmp_path, capsys, argv, below):
    """It was `FileExistsError: [Errno 17] File exists: '.../dangling'`."""
    assert main([a.replace("{out}", f"{link}{below}") for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"ForeignOutput: {argv[0]}" in err and f"{link} is a symlink" in err, err
    assert _untouched(link, tmp_path)


def test_device_init_keeps_a_link_to_nothing(link, tmp_path, capsys):
    """Without --force an existing path is kept; the link was replaced by the template."""
    assert main(["device", "init", "--out", str(link)]) == 2
    assert "exists; edit it, or pass --force" in capsys.readouterr().err
    assert _untouched(link, tmp_path)
