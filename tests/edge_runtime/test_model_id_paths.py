"""A model id arrives in messages and names folders on the device (artifacts/<model_id>,
state/<device>/<model_id>), so it must be one plain name: a TrainTask or ArtifactFile naming
"../../victim" once made a download replace a folder outside the artifacts directory
(fetch.ArtifactDownload installs by rmtree + rename). Now each such use refuses it with
UnsafeModelId (kernel/manifest.check_model_id) and nothing outside is touched."""

from __future__ import annotations

import hashlib
import json

import pytest

from fedge.edge_runtime.fetch import ArtifactDownload
from fedge.edge_runtime.kernel.errors import UnsafeModelId
from fedge.edge_runtime.kernel.manifest import MANIFEST_FORMAT, check_model_id
from fedge.edge_runtime.kernel.protocol import ArtifactFile
from fedge.edge_runtime.store import DeviceStore

BAD = ["../victim", "../../../victim", "..", ".", "", "a/b", "/abs", ".hidden", "a\\b", "x" * 129, "café", "abc\n",
       "artifacts", "pending", "secagg-answered", "seen_tasks.json"]
GOOD = ["0123456789abcdef01234567", "mnist-mlp", "tiny_model.v2", "M" * 128]


@pytest.mark.parametrize("model_id", BAD)
def test_a_model_id_that_is_not_a_plain_name_is_refused_everywhere_it_would_name_a_folder(tmp_path, model_id):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    artifacts = tmp_path / "state" / "pi-1" / "artifacts"
    artifacts.mkdir(parents=True)
    with pytest.raises(UnsafeModelId):
        check_model_id(model_id)
    with pytest.raises(UnsafeModelId):
        ArtifactDownload(model_id, "0" * 64, artifacts / model_id)
    with pytest.raises(UnsafeModelId):
        DeviceStore(tmp_path / "state" / "pi-1", model_id)
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.txt"]


@pytest.mark.parametrize("model_id", GOOD)
def test_plain_names_and_computed_ids_pass(tmp_path, model_id):
    assert check_model_id(model_id) == model_id
    assert DeviceStore(tmp_path, model_id).dir == tmp_path / model_id


def test_the_download_that_replaced_a_folder_outside_the_artifacts_directory(tmp_path, monkeypatch):
    """The report's attack, step for step: a manifest whose hash the task names, then its file."""
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.txt").write_text("years of work")
    model_id = "../../../victim"
    data = b"x"
    manifest = json.dumps({"format": MANIFEST_FORMAT, "model_id": model_id, "name": "m", "spec": {}, "params": [],
                           "input_shape": [1], "embedding_shape": [1], "heads": [],
                           "files": {"eval.onnx": hashlib.sha256(data).hexdigest()}}).encode()
    digest = hashlib.sha256(manifest).hexdigest()
    with pytest.raises(UnsafeModelId):
        download = ArtifactDownload(model_id, digest, tmp_path / "state" / "pi-1" / "artifacts" / model_id)
        download.accept(ArtifactFile(model_id=model_id, path="manifest.json", data=manifest, sha256=digest))
        download.accept(ArtifactFile(model_id=model_id, path="eval.onnx", data=data,
                                     sha256=hashlib.sha256(data).hexdigest()))
    assert sorted(p.name for p in victim.iterdir()) == ["thesis.txt"]


@pytest.mark.parametrize("device_id", [".", "..", "a\\b", "a/b", ""])
def test_a_device_id_that_would_name_state_dir_or_its_parent_is_refused(device_id):
    from fedge.edge_runtime.device_config import DeviceConfig
    from fedge.edge_runtime.kernel.errors import ConfigError

    with pytest.raises(ConfigError, match="device_id"):
        DeviceConfig(device_id=device_id)
