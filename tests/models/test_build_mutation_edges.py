"""Edges of `fedge build-artifacts`'s output folder (models/build.py, models/output_dir.py) that
the mutation8-build audit found no test reaching: a file under the build record's name that is no
record of fedge's, a refused ort/ folder with fedge's earlier build beside it, and an earlier
build's backbone.onnx when the new spec has none. Oracle: the folder's files as they were."""

from __future__ import annotations

import pytest

pytest.importorskip("onnx")

import fedge.models.ort_artifacts as ort_artifacts  # noqa: E402
from fedge.edge_runtime.kernel.errors import ConfigError  # noqa: E402
from fedge.edge_runtime.kernel.manifest import load_manifest  # noqa: E402
from fedge.models.build import BUILD_RECORD, build_artifacts  # noqa: E402
from fedge.models.output_dir import ForeignOutput, read_record  # noqa: E402
from fedge.models.spec import mlp_spec  # noqa: E402

SPEC = mlp_spec(6, 3, hidden=(5,), modes=("lora",), name="tiny")


def _snapshot(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_file_under_the_build_records_name_that_is_not_fedges_is_refused_and_kept(tmp_path):
    (tmp_path / BUILD_RECORD).write_text("my notes on the build")
    with pytest.raises(ForeignOutput, match=r"\.fedge-build\.json"):
        build_artifacts(SPEC, tmp_path, ort_training=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [BUILD_RECORD]
    assert (tmp_path / BUILD_RECORD).read_text() == "my notes on the build"


@pytest.mark.parametrize("body", ['{"files": "eval.onnx"}', '{"files": {"eval.onnx": 1}}', '{"files": [1]}',
                                  '{"files": ["../x"]}', '["eval.onnx"]'])
def test_a_record_not_of_fedges_shape_is_no_record(tmp_path, body):
    """A string's characters all match the name pattern: {"files": "eval.onnx"} read as a
    record would make a foreign folder fedge's (build.py trusts any readable record), and its
    eval.onnx replaced. It is a file under the record's name that fedge did not write."""
    (tmp_path / BUILD_RECORD).write_text(body)
    assert read_record(tmp_path / BUILD_RECORD) is None
    (tmp_path / "eval.onnx").write_bytes(b"the user's own")
    with pytest.raises(ForeignOutput, match=r"already holds \.fedge-build\.json, which fedge did not write"):
        build_artifacts(SPEC, tmp_path, ort_training=False)
    assert (tmp_path / "eval.onnx").read_bytes() == b"the user's own"
    assert (tmp_path / BUILD_RECORD).read_text() == body


def test_a_foreign_file_in_ort_beside_an_earlier_build_is_refused_before_anything_is_written(tmp_path,
                                                                                              monkeypatch):
    """The ORT folder is checked before the portable graphs are written (build.py's docstring):
    the generation is never reached, and fedge's earlier files are untouched, bytes and times."""
    build_artifacts(SPEC, tmp_path, ort_training=False)
    (tmp_path / "ort").mkdir()
    (tmp_path / "ort" / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)

    def reached(*args, **kwargs):
        raise AssertionError("the ORT artifacts were generated before the ort/ folder was checked")

    monkeypatch.setattr(ort_artifacts, "generate_ort_artifacts", reached)
    with pytest.raises(ConfigError, match=r"notes\.txt"):
        build_artifacts(SPEC, tmp_path, ort_training=True)
    assert _snapshot(tmp_path) == before


def test_an_earlier_builds_backbone_is_removed_when_the_new_spec_has_none(tmp_path):
    """ModelRuntime.embed runs backbone.onnx when it is there: one left from a spec with a
    frozen first layer would feed the new model embeddings of the wrong width."""
    frozen_first = mlp_spec(6, 3, hidden=(5, 4), modes=("frozen", "lora"), name="tiny")
    build_artifacts(frozen_first, tmp_path, ort_training=False)
    assert (tmp_path / "backbone.onnx").is_file()
    manifest = build_artifacts(SPEC, tmp_path, ort_training=False)
    assert not (tmp_path / "backbone.onnx").exists() and "backbone.onnx" not in manifest.files
    assert set(load_manifest(tmp_path).files) == set(manifest.files)


def test_the_model_id_of_an_import_does_not_depend_on_where_the_source_lies(tmp_path):
    """The source's path is provenance, not identity (build.py): the same file imported from two
    folders builds one model_id."""
    import onnx
    from onnx import helper

    from fedge.models.onnx_import import ImportOptions, import_spec
    from tests.models.test_import_mutation_edges import _model

    model = _model([helper.make_node("Relu", ["h"], ["a"], name="relu1"),
                    helper.make_node("MatMul", ["a", "w2"], ["y"], name="out")], "y")
    ids = []
    for where in ("a", "b"):
        (tmp_path / where).mkdir()
        onnx.save(model, tmp_path / where / "m.onnx")
        spec = import_spec(ImportOptions(str(tmp_path / where / "m.onnx"), head="global"))
        ids.append(build_artifacts(spec, tmp_path / where / "out", ort_training=False).model_id)
    assert ids[0] == ids[1]


# Every file a portable build writes (README, build-artifacts): written by hand, not read from build.py.
WRITES = ["backbone.onnx", "eval.onnx", "train_step_sgd.onnx", "train_step_adamw.onnx", "params_init.npz",
          "manifest.json"]


@pytest.mark.parametrize("kind", ["file", "dangling link"])
@pytest.mark.parametrize("name", WRITES)
def test_each_name_a_build_writes_is_refused_when_fedge_did_not_write_it(tmp_path, name, kind):
    """A dangling link too: the atomic write's rename would replace the link, which fedge did not make."""
    out = tmp_path / "out"
    out.mkdir()
    if kind == "file":
        (out / name).write_bytes(b"the user's own")
    else:
        (out / name).symlink_to(tmp_path / "nowhere")
    with pytest.raises(ForeignOutput, match=name.replace(".", r"\.")):
        build_artifacts(SPEC, out, ort_training=False)
    assert [p.name for p in out.iterdir()] == [name]
    assert (out / name).read_bytes() == b"the user's own" if kind == "file" else (out / name).is_symlink()
