"""Output folders that fedge writes into with names of its own (`fedge pretrain --out`, `fedge
build-artifacts OUTDIR`): a file fedge did not write is never replaced or deleted, and is named
in a ForeignOutput before anything is written (models/output_dir.py). What fedge wrote there
itself is its to replace, and a re-run with fewer devices removes the earlier run's extra
client files (they would be extra devices under --data)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")

from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.output_dir import ForeignOutput, read_record  # noqa: E402
from fedge.models.spec import load_spec  # noqa: E402
from fedge.tools.pretrain import RECORD, PretrainConfig, pretrain  # noqa: E402
from tests.tools.test_pretrain import SPEC  # noqa: E402


@pytest.fixture()
def spec_file(tmp_path):
    path = tmp_path / "digits.toml"
    path.write_text(SPEC)
    return path


def _pretrain(out, spec_file, devices=4):
    return pretrain(PretrainConfig(out=str(out), dataset="digits", devices=devices, epochs=1, spec=str(spec_file)))


def _clients(out):
    return sorted(p.name for p in (out / "clients").iterdir())


@pytest.mark.parametrize("foreign", ["model.toml", "pretrained.onnx", "clients/mine.npz", "clients"])
def test_pretrain_refuses_a_folder_holding_a_file_it_did_not_write(tmp_path, spec_file, foreign):
    out = tmp_path / "out"
    path = out / foreign
    path.parent.mkdir(parents=True)
    path.write_bytes(b"the user's own")
    with pytest.raises(ForeignOutput, match=foreign.replace(".", r"\.")):
        _pretrain(out, spec_file)
    assert path.read_bytes() == b"the user's own"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        {foreign, *(["clients"] if foreign.startswith("clients/") else [])})  # nothing written


def test_pretrain_replaces_its_own_output_and_drops_the_extra_devices_of_a_larger_run(tmp_path, spec_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # files under names pretrain never writes: left alone,
    (out / "clients").mkdir()
    (out / "clients" / "README").write_text("mine")  # beside the devices too (only an .npz is one)
    _pretrain(out, spec_file, devices=6)
    six = _clients(out)
    six.remove("README")
    assert len(six) == 6 and read_record(out / RECORD) == {"pretrained.onnx", "model.toml",
                                                            *(f"clients/{n}" for n in six)}
    _pretrain(out, spec_file, devices=4)
    four = _clients(out)
    four.remove("README")
    assert len(four) == 4 and set(four) < set(six)  # the two extra devices are gone
    assert read_record(out / RECORD) == {"pretrained.onnx", "model.toml", *(f"clients/{n}" for n in four)}
    assert (out / "notes.txt").read_text() == "mine" and (out / "clients" / "README").read_text() == "mine"


def test_pretrain_takes_back_a_folder_written_before_the_record_existed(tmp_path, spec_file):
    """Folders from earlier versions (`make demo`'s runs/demo/pretrained) have no record; the
    model.toml header this command writes marks them as its own."""
    out = tmp_path / "out"
    _pretrain(out, spec_file, devices=6)
    (out / RECORD).unlink()
    _pretrain(out, spec_file, devices=4)
    assert len(_clients(out)) == 4
    (out / RECORD).unlink()
    (out / "model.toml").write_text("[model]\n")  # no header: the user's now
    with pytest.raises(ForeignOutput, match="model.toml"):
        _pretrain(out, spec_file)


def test_a_record_that_names_paths_outside_the_folder_is_not_trusted(tmp_path, spec_file):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.toml").write_text("the user's own")
    (out / RECORD).write_text(json.dumps({"files": ["model.toml", "../elsewhere"]}))
    assert read_record(out / RECORD) is None
    with pytest.raises(ForeignOutput, match="model.toml"):
        _pretrain(out, spec_file)
    assert (out / "model.toml").read_text() == "the user's own"
    (out / "model.toml").unlink()
    with pytest.raises(ForeignOutput, match=RECORD.replace(".", r"\.")):  # nor is it replaced
        _pretrain(out, spec_file)
    assert "../elsewhere" in (out / RECORD).read_text()


def test_build_artifacts_refuses_a_folder_holding_a_file_it_did_not_write(tmp_path, spec_file):
    spec = load_spec(str(spec_file))
    out = tmp_path / "art"
    out.mkdir()
    (out / "eval.onnx").write_bytes(b"the user's own")
    with pytest.raises(ForeignOutput, match=r"eval\.onnx"):
        build_artifacts(spec, out, ort_training=False)
    assert sorted(p.name for p in out.iterdir()) == ["eval.onnx"]
    assert (out / "eval.onnx").read_bytes() == b"the user's own"

    own = tmp_path / "own"
    first = build_artifacts(spec, own, ort_training=False)
    again = build_artifacts(spec, own, ort_training=False)  # its manifest says the folder is fedge's
    assert again.model_id == first.model_id
    (own / "manifest.json").write_text("not a manifest")  # then it is not (nor, without its record, the rest)
    (own / ".fedge-build.json").unlink()
    with pytest.raises(ForeignOutput, match="manifest.json"):
        build_artifacts(spec, own, ort_training=False)


def test_data_split_refuses_a_foreign_device_file_and_replaces_its_own(tmp_path, capsys):
    from fedge.tools.cli import main

    def split(devices):
        return main(["data", "split", "--dataset", "digits", "--devices", str(devices), "--out", str(out)])

    out = tmp_path / "data"
    out.mkdir()
    (out / "dev-000.npz").write_bytes(b"the user's own")
    assert split(3) == 2 and "dev-000.npz" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["dev-000.npz"]
    (out / "dev-000.npz").unlink()
    (out / "other.npz").write_bytes(b"the user's own")  # not a name split writes, but one more device
    assert split(3) == 2 and "one more device" in capsys.readouterr().err
    (out / "other.npz").unlink()
    assert split(3) == 0 and split(2) == 0  # its own: replaced, and the third device removed
    assert sorted(p.name for p in out.glob("*.npz")) == ["dev-000.npz", "dev-001.npz"]


def test_build_artifacts_refuses_an_ort_folder_in_a_folder_it_did_not_build(tmp_path, spec_file):
    """The ORT check goes by file names (ort_artifacts._check_replaceable); without a manifest
    beside it, an ort/ holding a file called `checkpoint` (TensorFlow's index) is not fedge's."""
    spec = load_spec(str(spec_file))
    (tmp_path / "ort").mkdir()
    (tmp_path / "ort" / "checkpoint").write_bytes(b"the user's own")
    with pytest.raises(ForeignOutput, match="ort"):
        build_artifacts(spec, tmp_path, ort_training=True)
    assert (tmp_path / "ort" / "checkpoint").read_bytes() == b"the user's own"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.toml", "ort"]


def test_the_heterogeneity_report_folder_is_checked_before_the_grid_runs(tmp_path):
    """`fedge bench heterogeneity --json results/run.json` writes report.md and three PNGs beside
    it by default: someone else's report.md there was replaced at the end of the run."""
    from fedge.tools.bench.hetero_report import FILES, RECORD, claim_report_dir

    (tmp_path / "report.md").write_text("# My notes\n")
    with pytest.raises(ForeignOutput, match=r"report\.md"):
        claim_report_dir(tmp_path)
    assert (tmp_path / "report.md").read_text() == "# My notes\n"
    (tmp_path / "report.md").write_text("# Heterogeneity benchmark\n...")  # an earlier run's, before the record
    claim_report_dir(tmp_path)
    assert read_record(tmp_path / RECORD) == set(FILES)
    (tmp_path / "report.md").write_text("# My notes again\n")  # the record says report.md is fedge's now
    claim_report_dir(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    (other / "accuracy_vs_round.png").write_bytes(b"my plot")
    (other / "data.npz").write_bytes(b"not a device folder: an .npz is nobody's business here")
    with pytest.raises(ForeignOutput, match="accuracy_vs_round"):
        claim_report_dir(other)


def test_a_build_that_died_midway_can_be_run_again_into_its_folder(tmp_path, spec_file, monkeypatch):
    """The manifest is written last, so a build stopped by a full disk (or Ctrl-C, or an ORT
    error before a fallback build) left files no record claimed, and every later build into the
    folder was refused. The build's record is written before its first file."""
    import fedge.models.build as build

    spec = load_spec(str(spec_file))
    real = build.atomic_write_bytes

    def disk_full(path, data):
        if str(path).endswith("params_init.npz"):
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(build, "atomic_write_bytes", disk_full)
    with pytest.raises(OSError):
        build_artifacts(spec, tmp_path / "art", ort_training=False)
    assert not (tmp_path / "art" / "manifest.json").exists() and (tmp_path / "art" / "eval.onnx").exists()
    monkeypatch.setattr(build, "atomic_write_bytes", real)
    assert build_artifacts(spec, tmp_path / "art", ort_training=False).model_id


@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/deeper"])
def test_an_out_folder_that_is_a_file_is_named(tmp_path, capsys, out):
    """`--out notes.txt` (a file) ended in a bare `FileExistsError: File exists: 'notes.txt'` from
    the mkdir, for build-artifacts, data split and pretrain alike; it names the file now."""
    from fedge.tools.cli import main

    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    target = str(tmp_path / out)
    for argv in (["build-artifacts", "mnist-mlp-lora", target, "--ort-training", "no"],
                 ["data", "split", "--dataset", "digits", "--devices", "2", "--out", target],
                 ["pretrain", "--dataset", "digits", "--devices", "2", "--epochs", "1", "--out", target]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"ForeignOutput: {argv[0]}" in err and f"{notes} is a file, not a folder" in err, err
    assert notes.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
