"""Never touch user files: every fedge command that writes into a folder leaves what the
user already had there, and scratch state lives in a folder fedge made (and removes) itself."""

from __future__ import annotations

import tempfile

import pytest

from fedge.tools.cli import main

# Names a careless command might claim: fedge's own subfolders and a plain file beside them.
PLANTED = ("important.txt", "devices/important.txt", "artifacts/important.txt", "ort/important.txt")


def _plant(folder):
    for rel in PLANTED:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"user data: {rel}\n")


def _intact(folder):
    return {rel: (folder / rel).read_text() if (folder / rel).exists() else None for rel in PLANTED} == {
        rel: f"user data: {rel}\n" for rel in PLANTED}


COMMANDS = {
    "simulate --json": lambda d: ["simulate", "--dataset", "digits", "--devices", "3", "--rounds", "1",
                                  "--clients-per-round", "2", "--json", str(d / "run.json"), "--quiet"],
    "simulate --out": lambda d: ["simulate", "--dataset", "digits", "--devices", "3", "--rounds", "1",
                                 "--clients-per-round", "2", "--out", str(d), "--quiet"],
    "build-artifacts": lambda d: ["build-artifacts", "mnist-mlp-lora", str(d)],
    "data split": lambda d: ["data", "split", "--dataset", "digits", "--devices", "2", "--out", str(d)],
    "pretrain": lambda d: ["pretrain", "--out", str(d), "--devices", "2", "--epochs", "1"],
    "provision broker": lambda d: ["provision", "broker", "--out", str(d)],
    "provision device": lambda d: ["provision", "device", "--id", "dev-1", "--out", str(d),
                                   "--passwd-file", str(d / "passwd")],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_user_files_survive(name, tmp_path, monkeypatch):
    out, scratch = tmp_path / "out", tmp_path / "tmp"
    scratch.mkdir()
    _plant(out)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where fedge's own scratch folders go
    main(COMMANDS[name](out))  # may refuse (build-artifacts over a foreign ort/), never delete
    assert _intact(out), name
    assert list(scratch.iterdir()) == []  # scratch removed after the run
    if name.startswith("simulate"):
        # --json out/run.json, or --out out: the run and its plot beside the user's files
        assert sorted(p.name for p in out.iterdir()) == sorted({"important.txt", "devices", "artifacts", "ort",
                                                                "run.json", "run.png"})


def test_build_artifacts_refuses_a_foreign_ort_folder(tmp_path, capsys):
    from fedge.edge_runtime.kernel.backends import available_backends

    if "ort-training" not in available_backends():
        pytest.skip("the ort/ folder is only written with onnxruntime-training")
    (tmp_path / "ort").mkdir()
    (tmp_path / "ort" / "notes.txt").write_text("mine")
    assert main(["build-artifacts", "mnist-mlp-lora", str(tmp_path)]) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert (tmp_path / "ort" / "notes.txt").read_text() == "mine"
    (tmp_path / "ort" / "notes.txt").unlink()  # an older build's own folder is replaced
    assert main(["build-artifacts", "mnist-mlp-lora", str(tmp_path)]) == 0
    assert main(["build-artifacts", "mnist-mlp-lora", str(tmp_path)]) == 0
