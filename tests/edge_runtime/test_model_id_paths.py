"""A model id arrives in messages and names folders on the device (artifacts/<model_id>,
state/<device>/<model_id>), so it must be one plain name: a TrainTask or ArtifactFile naming
"../../victim" once made a download replace a folder outside the artifacts directory
(fetch.ArtifactDownload installs by rmtree + rename). Now each such use refuses it with
UnsafeModelId (kernel/manifest.check_model_id) and nothing outside is touched."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest

from fedge.edge_runtime.fetch import ArtifactDownload
from fedge.edge_runtime.kernel.device_folder import RESERVED
from fedge.edge_runtime.kernel.errors import UnsafeModelId
from fedge.edge_runtime.kernel.manifest import MANIFEST_FORMAT, check_model_id
from fedge.edge_runtime.kernel.protocol import ArtifactFile
from fedge.edge_runtime.store import DeviceStore

BAD = ["../victim", "../../../victim", "..", ".", "", "a/b", "/abs", ".hidden", "a\\b", "x" * 129, "café", "abc\n",
       *sorted(RESERVED)]
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


def _npz(path, **over):
    arrays = {"x_train": np.zeros((4, 3), np.float32), "y_train": np.array([0, 1, 0, 1]),
              "x_test": np.zeros((2, 3), np.float32), "y_test": np.array([0, 1])}
    arrays.update(over)
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("bad, words", [
    ({"x_train": [[float("nan")] * 3] * 4}, "NaN or Inf"),
    ({"x_train": [0.0, 1.0, 2.0, 3.0]}, "must be (examples"),
    ({"y_train": [0, -1, 0, 1]}, "negative labels"),
    ({"y_train": [0.5, 1, 0, 1]}, "non-integer"),
    ({"x_train": np.zeros((0, 3)), "y_train": np.zeros(0, np.int64)}, "no examples"),
])
def test_the_device_refuses_its_own_data_file_by_name(tmp_path, bad, words):
    """device_config.load_local_data, at start and at each SIGHUP reload, makes the checks
    `fedge simulate --data` makes (edge_runtime/examples.py), and keeps the arrays it checked."""
    from fedge.edge_runtime.device_config import load_local_data
    from fedge.edge_runtime.kernel.errors import DatasetError

    with pytest.raises(DatasetError, match=re.escape(words)):
        load_local_data(_npz(tmp_path / "bad.npz", **{k: np.asarray(v) for k, v in bad.items()}))
    data = load_local_data(_npz(tmp_path / "ok.npz"))
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64 and data.x_train.shape == (4, 3)


def test_bool_labels_and_features_load_as_zero_and_one(tmp_path):
    """A binary task's labels stored as bool (and flag features) were refused as 'labels must
    be integers'; False/True are classes 0 and 1, and string labels are still refused."""
    from fedge.edge_runtime.device_config import load_local_data
    from fedge.edge_runtime.kernel.errors import DatasetError

    flags = np.array([[True, False, True], [False, False, True], [True, True, False], [False, True, True]])
    data = load_local_data(_npz(tmp_path / "b.npz", x_train=flags, y_train=np.array([True, False, False, True]),
                                y_test=np.array([False, True])))
    np.testing.assert_array_equal(data.y_train, [1, 0, 0, 1])
    np.testing.assert_array_equal(data.x_train, flags.astype(np.float32))
    assert data.y_train.dtype == np.int64 and data.x_train.dtype == np.float32
    with pytest.raises(DatasetError, match="labels must be integers"):
        load_local_data(_npz(tmp_path / "s.npz", y_train=np.array(["a", "b", "a", "b"])))
