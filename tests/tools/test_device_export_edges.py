"""`fedge device export` refusals that no export test reached (found by the mutation7-simfleet
audit): a --model-id the device has no artifacts for, and a device's saved global model written
for other contents of the same model id (superseded.py's state key), which would export a head
trained on another backbone."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from fedge.edge_runtime.store import DeviceStore  # noqa: E402
from fedge.edge_runtime.superseded import KEY_FIELD  # noqa: E402
from fedge.models.build import build_artifacts  # noqa: E402
from fedge.models.spec import mlp_spec  # noqa: E402
from fedge.tools.cli import main  # noqa: E402


def _device(tmp_path):
    spec = mlp_spec(10, 3, hidden=(8,), modes=("personal",))
    probe = build_artifacts(spec, tmp_path / "probe", ort_training=False)
    build_artifacts(spec, tmp_path / "state" / "devA" / "artifacts" / probe.model_id, ort_training=False)
    (tmp_path / "dev.toml").write_text(f'device_id = "devA"\nstate_dir = "{tmp_path / "state"}"\n'
                                       '[data]\nnpz = "x.npz"\n')
    return probe.model_id


def _export(tmp_path, *extra) -> int:
    return main(["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(tmp_path / "m.onnx"),
                 *extra])


def test_a_model_id_the_device_has_no_artifacts_for_is_refused_naming_the_ones_it_has(tmp_path, capsys):
    model_id = _device(tmp_path)
    assert _export(tmp_path, "--model-id", "other-model") == 2
    err = capsys.readouterr().err
    assert f"no artifacts for model other-model under {tmp_path / 'state' / 'devA' / 'artifacts'}; it has only " \
           f"{model_id}\n" in err
    assert not (tmp_path / "m.onnx").exists()


def test_a_global_model_written_for_other_contents_is_refused(tmp_path, capsys):
    model_id = _device(tmp_path)
    folder = DeviceStore(tmp_path / "state" / "devA", model_id).dir
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "global.npz", **{KEY_FIELD: np.array("0" * 32)})  # another state key than the artifacts'
    assert _export(tmp_path) == 2
    assert "written for other contents" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_no_artifacts_names_the_absolute_folder_a_relative_state_dir_was_taken_from(tmp_path, capsys, monkeypatch):
    # run from another folder than the device's: a relative state_dir then names an empty place
    (tmp_path / "dev.toml").write_text('device_id = "devA"\nstate_dir = "fedge-state"\n[data]\nnpz = "x.npz"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert _export(tmp_path) == 2
    err = capsys.readouterr().err
    # said as a sentence: it once read "no artifacts for model (any) under ...; it has none"
    assert f"device devA: no model artifacts under {elsewhere / 'fedge-state' / 'devA' / 'artifacts'} (state_dir " \
           "'fedge-state' is relative: it is taken from the current folder" in err
    assert "(any)" not in err and "none" not in err
