"""The artifact manifest's refusals at their edges (mutation7-kernel): a manifest of another
format, a listed file that is missing, a parameter of the wrong shape. Each is a named
ArtifactError, never a KeyError or a bare OSError, and never a pass."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from fedge.edge_runtime.kernel.errors import ArtifactError, ArtifactIntegrityError, ManifestMismatch
from fedge.edge_runtime.kernel.manifest import (
    MANIFEST_FORMAT,
    Manifest,
    ParamInfo,
    check_params,
    load_manifest,
    verify_files,
)


def _manifest(files: dict[str, str] | None = None) -> Manifest:
    return Manifest(model_id="m1", name="m", spec={}, params=(ParamInfo("w", (2, 3), "shared"),
                                                                ParamInfo("h", (3,), "personal")),
                    input_shape=(3,), embedding_shape=(3,), heads=("global",), files=files or {})


@pytest.mark.parametrize("fmt", [MANIFEST_FORMAT + 1, 0, None])
def test_a_manifest_of_another_format_is_refused_by_name(fmt):
    d = json.loads(_manifest().to_json())
    assert Manifest.from_json(json.dumps(d)) == _manifest()  # the format this build writes reads back
    if fmt is None:
        del d["format"]
    else:
        d["format"] = fmt
    with pytest.raises(ArtifactError, match=f"manifest format {fmt!r} is not {MANIFEST_FORMAT}"):
        Manifest.from_json(json.dumps(d))


def test_a_listed_file_that_is_missing_is_an_integrity_error_not_an_oserror(tmp_path):
    data = b"backbone bytes"
    (tmp_path / "a.onnx").write_bytes(data)
    manifest = _manifest({"a.onnx": hashlib.sha256(data).hexdigest(), "b.onnx": "0" * 64})
    verify_files(tmp_path, manifest, only=("a.onnx",))  # the present file hashes right
    with pytest.raises(ArtifactIntegrityError, match="b.onnx: listed in the manifest but missing"):
        verify_files(tmp_path, manifest)


def test_a_param_of_another_shape_is_a_mismatch_however_its_size():
    manifest = _manifest()
    check_params(manifest, {"w": np.zeros((2, 3))}, "shared")
    for shape in [(3, 2), (6,), (2, 3, 1)]:  # the same 6 values in another layout: still refused
        with pytest.raises(ManifestMismatch, match=rf"param w: shape \({shape[0]},"):
            check_params(manifest, {"w": np.zeros(shape)}, "shared")


def test_a_listed_name_that_is_a_folder_is_an_integrity_error_not_an_oserror(tmp_path):
    """verify_files opened it and raised IsADirectoryError, an OSError no caller names."""
    (tmp_path / "ort").mkdir()
    with pytest.raises(ArtifactIntegrityError, match="ort: listed in the manifest but cannot be read"):
        verify_files(tmp_path, _manifest({"ort": "0" * 64}))


def _fifo_folder(tmp_path, which: str):
    """A model folder whose manifest.json, or whose one listed file, is a FIFO nothing writes to."""
    import os

    folder = tmp_path / "m1"
    folder.mkdir()
    if which == "manifest":
        os.mkfifo(folder / "manifest.json")
    else:
        (folder / "manifest.json").write_text(_manifest({"a.onnx": "0" * 64}).to_json(), encoding="utf-8")
        os.mkfifo(folder / "a.onnx")
    return folder


@pytest.mark.parametrize("which", ["manifest", "listed file"])
def test_a_fifo_by_an_artifact_s_name_is_refused_by_name_not_waited_on(tmp_path, which):
    """Opened for reading, a FIFO blocks until something writes to it: a device reading a
    manifest.json or a listed file that is one hung for ever. Now it is a file that cannot be read."""
    import threading

    from fedge.edge_runtime.kernel.manifest import manifest_hash

    folder = _fifo_folder(tmp_path, which)
    outcome = []

    def load():
        try:
            load_manifest(folder, verify=True)
            outcome.append("loaded")
        except ArtifactError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(5.0)
    assert outcome and isinstance(outcome[0], ArtifactError) and "cannot be read" in str(outcome[0]), outcome
    if which == "manifest":
        assert manifest_hash(folder) is None
