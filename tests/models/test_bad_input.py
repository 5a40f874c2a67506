"""Bad input fails with a named error and a message that says what to fix."""

from __future__ import annotations

import numpy as np
import pytest

from fedge.coordinator.config import load_coordinator_config
from fedge.edge_runtime.kernel.errors import ArtifactIntegrityError, ConfigError, DatasetError, ManifestMismatch
from fedge.edge_runtime.kernel.manifest import check_params, load_manifest
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.models.build import build_artifacts
from fedge.models.spec import load_spec, mlp_spec
from fedge.tools.cli import main


@pytest.fixture()
def artifacts(tmp_path):
    d = tmp_path / "art"
    build_artifacts(mlp_spec(10, 3, hidden=(6,)), d, ort_training=False)
    return d


def test_corrupted_artifact(artifacts):
    path = artifacts / "eval.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match="eval.onnx.*rebuild"):
        ModelRuntime(artifacts)


def test_manifest_mismatch(artifacts):
    with pytest.raises(ManifestMismatch, match="expected 0000"):
        ModelRuntime(artifacts, expected_model_id="0000")
    manifest = load_manifest(artifacts)
    shared = {p.name: np.zeros(p.shape, np.float32) for p in manifest.by_role("shared")}
    check_params(manifest, shared, "shared")
    name = next(iter(shared))
    shared[name] = np.zeros((1, 1), np.float32)
    with pytest.raises(ManifestMismatch, match=f"param {name}: shape"):
        check_params(manifest, shared, "shared")


def test_dataset_with_wrong_shape(artifacts):
    runtime = ModelRuntime(artifacts)
    with pytest.raises(DatasetError, match=r"do not fit model .* input \(10,\)"):
        runtime.embed(np.zeros((4, 11), np.float32))
    with pytest.raises(DatasetError, match="NaN"):
        runtime.embed(np.full((4, 10), np.nan, np.float32))


def test_unknown_config_keys(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('[model]\nname = "m"\ninput_shape = [4]\nnum_classes = 2\nlora_rnk = 3\n')
    with pytest.raises(ConfigError, match="unknown key.*'lora_rnk'.*valid keys are.*lora_rank"):
        load_spec(spec)
    coord = tmp_path / "coordinator.toml"
    coord.write_text("clients_per_round = 5\n[hyper]\nlrr = 0.1\n")
    with pytest.raises(ConfigError, match=r"hyper: unknown key\(s\) 'lrr'"):
        load_coordinator_config(coord)
    coord.write_text('clients_per_round = "five"\n')
    with pytest.raises(ConfigError, match="clients_per_round: expected an integer"):
        load_coordinator_config(coord)


def test_cli_reports_named_errors(tmp_path, capsys):
    spec = tmp_path / "bad.toml"
    spec.write_text('[model]\nname = "m"\ninput_shape = [4]\nnum_classes = 2\nhead = "both"\n')
    assert main(["build-artifacts", str(spec), str(tmp_path / "out")]) == 2
    assert "ConfigError" in capsys.readouterr().err
    data = tmp_path / "data"
    data.mkdir()
    np.savez(data / "a.npz", x_train=np.zeros((3, 4)), y_train=np.zeros(2), x_test=np.zeros((1, 4)), y_test=np.zeros(1))
    assert main(["simulate", "--data", str(data), "--rounds", "1", "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "DatasetError" in err and "a.npz" in err
