"""The names fedge writes in a device's own folder beside its model folders
(kernel/device_folder.RESERVED) are never a model id: refused on decode, in a manifest and where
a folder is named; and a folder by such a name, holding a staged state or a manifest, is skipped
with a `not_a_model_folder` line where it stopped the device's start (journal.recover, the
models it lists). Before, standardization.npz was written there unreserved, and the names were
written twice (each writer, and the manifest's own list)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedge.edge_runtime.fetched_models import installed_models
from fedge.edge_runtime.journal import DeviceJournal
from fedge.edge_runtime.kernel import device_folder
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.device_folder import NOT_A_MODEL_FOLDER, RESERVED
from fedge.edge_runtime.kernel.errors import UnsafeModelId
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE, Manifest
from fedge.edge_runtime.store import DeviceStore

NAMES = sorted(RESERVED)


def test_every_name_the_device_folder_module_declares_is_reserved():
    declared = {v for k, v in vars(device_folder).items() if k.endswith(("_DIR", "_FILE"))}
    assert declared == RESERVED and "standardization.npz" in RESERVED


@pytest.mark.parametrize("name", NAMES)
def test_a_manifest_whose_model_id_is_a_reserved_name_is_refused(name):
    """(On decode and encode: test_codec_fields.NOT_MODEL_IDS; where a folder is named:
    test_model_id_paths.BAD.)"""
    text = Manifest(model_id="m", name="n", spec={}, params=(), input_shape=(1,), embedding_shape=(1,),
                    heads=()).to_json().replace('"model_id": "m"', f'"model_id": "{name}"')
    with pytest.raises(UnsafeModelId, match=rf"{MANIFEST_FILE}: model id '{name}'"):
        Manifest.from_json(text)


@pytest.mark.parametrize("name", NAMES)
def test_recover_skips_a_reserved_folder_holding_a_staged_state_and_recovers_the_rest(tmp_path, name, caplog):
    home = tmp_path / "d1"
    for model in ("a", "m", "z"):  # before and after every reserved name in the listing's order
        DeviceStore(home, model).stage("u1", {"personal": {"w": np.ones(2, np.float32)}}, {})  # never kept: dropped
    (home / name).mkdir(exist_ok=True)
    (home / name / "staged-u2.npz").write_bytes(b"not fedge's")
    with caplog.at_level(logging.ERROR, logger="fedge.journal"):
        DeviceJournal(home, clock=ManualClock()).recover()
    assert all(DeviceStore(home, m).staged() == [] for m in ("a", "m", "z"))  # the model folders around it too
    assert (home / name / "staged-u2.npz").read_bytes() == b"not fedge's"  # left as it is
    assert any(NOT_A_MODEL_FOLDER in r.getMessage() and name in r.getMessage() for r in caplog.records)


def test_a_model_folder_named_as_a_reserved_name_is_not_listed(tmp_path, caplog):
    for name in ("m", *NAMES):
        (tmp_path / name).mkdir()
        (tmp_path / name / MANIFEST_FILE).write_text("{}")
    with caplog.at_level(logging.ERROR, logger="fedge.agent"):
        assert installed_models(tmp_path) == {"m": tmp_path / "m"}
    assert sum(NOT_A_MODEL_FOLDER in r.getMessage() for r in caplog.records) == len(NAMES)
