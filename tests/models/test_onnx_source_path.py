"""Where a built folder's manifest names its ONNX source (relative to the folder, so it loads from
any cwd and names no builder's home folder), how the source is read (a regular file under
protobuf's limit), and roles on an import whose tail could not be read."""

from __future__ import annotations

import json
import os
import threading

import pytest

onnx = pytest.importorskip("onnx")

from fedge.edge_runtime.kernel.errors import ConfigError  # noqa: E402
from fedge.edge_runtime.kernel.manifest import load_manifest  # noqa: E402
from fedge.models import onnx_source  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.onnx_import import ImportOptions, OnnxImportError, import_spec  # noqa: E402
from fedge.models.onnx_source import UnknownLayerRole  # noqa: E402
from fedge.models.spec import load_spec  # noqa: E402
from fedge.tools.cli import main  # noqa: E402
from tests.models.test_onnx_import import _cnn  # noqa: E402


@pytest.fixture()
def built(tmp_path, monkeypatch):
    """`fedge build-artifacts specs/my.toml out/mine` run in tmp_path; the spec names `onnx = "cnn.onnx"`."""
    (tmp_path / "specs").mkdir()
    (tmp_path / "elsewhere").mkdir()
    onnx.save(_cnn(), tmp_path / "specs" / "cnn.onnx")
    (tmp_path / "specs" / "my.toml").write_text('[model]\nonnx = "cnn.onnx"\nnum_classes = 4\n')
    monkeypatch.chdir(tmp_path)
    assert main(["build-artifacts", "specs/my.toml", "out/mine", "--ort-training", "no"]) == 0
    return tmp_path / "out" / "mine"


def _record(folder, source: str) -> None:
    """The manifest's spec naming `source`, as a build before this rule wrote it."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["spec"]["onnx"] = source
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_folder_built_from_a_spec_file_loads_from_any_cwd(built, tmp_path, monkeypatch):
    """The spec's `onnx` was recorded as specs/cnn.onnx, relative to the build's cwd: from another
    folder, `simulate --model out/mine` could not read the source."""
    assert json.loads((built / "manifest.json").read_text())["spec"]["onnx"] == "../../specs/cnn.onnx"
    monkeypatch.chdir(tmp_path / "elsewhere")
    spec = load_spec(built)
    assert os.path.samefile(spec.onnx, tmp_path / "specs" / "cnn.onnx")
    # the path is no part of the model: rebuilt from elsewhere, the same model
    assert build_artifacts(spec, tmp_path / "again", ort_training=False).model_id == load_manifest(built).model_id


def test_older_folders_load_where_their_source_is_found(built, tmp_path, monkeypatch):
    source = tmp_path / "specs" / "cnn.onnx"
    monkeypatch.chdir(tmp_path / "elsewhere")
    _record(built, str(source))  # --from-onnx recorded an absolute path
    assert os.path.samefile(load_spec(built).onnx, source)
    _record(built, "specs/cnn.onnx")  # a spec file's, relative to the build's cwd
    monkeypatch.chdir(tmp_path)
    assert os.path.samefile(load_spec(built).onnx, source)
    monkeypatch.chdir(tmp_path / "elsewhere")  # neither beside the folder nor from here: say where it looked
    with pytest.raises(ConfigError, match=r"manifest.json: the model's ONNX source 'specs/cnn.onnx' is not at "
                                          r"'.*/out/mine/specs/cnn.onnx' nor 'specs/cnn.onnx'"):
        load_spec(built)


def test_a_fifo_as_the_source_is_refused_not_waited_on(tmp_path):
    """A hostile manifest naming a FIFO hung the build in read_bytes until a writer came."""
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    caught = []
    reader = threading.Thread(target=lambda: caught.append(_refusal(lambda: import_spec(ImportOptions(str(fifo))))),
                              daemon=True)
    reader.start()
    reader.join(20)
    if reader.is_alive():  # the old read: let it finish (EOF) before failing
        os.close(os.open(fifo, os.O_WRONLY))
        reader.join(20)
        pytest.fail("reading the FIFO blocked")
    assert isinstance(caught[0], ConfigError) and "not a regular file" in str(caught[0])


def _refusal(call) -> BaseException | None:
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test asserts which
        return exc
    return None


def test_a_source_past_protobufs_limit_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "cnn.onnx"
    onnx.save(_cnn(), path)
    monkeypatch.setattr(onnx_source, "MAX_MODEL_BYTES", path.stat().st_size - 1)
    with pytest.raises(OnnxImportError, match=f"over {path.stat().st_size - 1} bytes, past protobuf's limit"):
        import_spec(ImportOptions(str(path)))
    monkeypatch.setattr(onnx_source, "MAX_MODEL_BYTES", path.stat().st_size)  # at the limit: read
    assert import_spec(ImportOptions(str(path))).onnx == str(path)


def test_roles_on_an_import_only_its_new_head_trains_are_refused(tmp_path):
    """Cut at the first node with --classes: the tail is not read, and roles naming layers were ignored."""
    model = _cnn()
    onnx.save(model, tmp_path / "cnn.onnx")
    options = ImportOptions(str(tmp_path / "cnn.onnx"), cut=model.graph.node[0].output[0], num_classes=4)
    assert import_spec(options).layers == ()  # the case: only the new head trains
    with pytest.raises(UnknownLayerRole, match="a role for fc1, fc9, .*only the new head trains"):
        import_spec(ImportOptions(**{**vars(options), "roles": {"fc1": "lora", "fc9": "shared"}}))
