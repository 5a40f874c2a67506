"""A device keeps at most KEEP_FETCHED fetched models: a coordinator naming a new model id every
round once filled the device's disk (a reviewing helper's finding). Only folders fedge fetched
(with its marker) are removed, least recently used first; a model placed by hand stays."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from fedge.edge_runtime.fetched_models import FETCHED_MARK, KEEP_FETCHED, prune_fetched
from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import (
    ArtifactFile,
    Decline,
    FetchRequest,
    TaskHyper,
    TrainTask,
    Update,
    device_topic,
)
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.edge_runtime.one_device import DEVICE, one_device, pump
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _fetch(agent, coord, model, model_id: str, task_id: str) -> list:
    """A task for `model_id` (the tiny model under that id) and its files; what the device sent."""
    art, _, runtime = model
    doc = json.loads((art / "manifest.json").read_bytes())
    manifest = json.dumps({**doc, "model_id": model_id}).encode()
    sha = hashlib.sha256(manifest).hexdigest()
    task = TrainTask(1, task_id, DEVICE, model_id, 1, encode_dense(runtime.initial("shared")), TaskHyper(epochs=1),
                     manifest_sha256=sha, deadline_s=600.0)
    coord.publish(device_topic(DEVICE, "task"), encode_message(task))
    sent = pump(agent, coord)
    files = {rel: (art / rel).read_bytes() for rel in doc["files"]}
    items = [ArtifactFile(model_id, "manifest.json", sha, manifest, 0, 1 + len(files))]
    items += [ArtifactFile(model_id, rel, hashlib.sha256(data).hexdigest(), data, i + 1, 1 + len(files))
              for i, (rel, data) in enumerate(files.items())]
    if any(isinstance(m, FetchRequest) for m in sent):
        for item in items:
            coord.publish(device_topic(DEVICE, "artifact"), encode_message(item))
            sent += pump(agent, coord)
    return sent


def test_least_recently_used_fetched_models_go_and_hand_placed_ones_stay(model, tmp_path):
    agent, coord = one_device(model, tmp_path / "state", channels=("update", "fetch"), clock=ManualClock(),
                              artifacts_dir=tmp_path / "artifacts")
    mine = tmp_path / "artifacts" / "mine"  # a model put there by hand: no marker
    mine.mkdir(parents=True)
    (mine / "manifest.json").write_bytes((model[0] / "manifest.json").read_bytes())
    ids = [f"m{i}" for i in range(KEEP_FETCHED + 2)]
    for i, model_id in enumerate(ids):
        sent = _fetch(agent, coord, model, model_id, f"t{i}")
        assert [type(m) for m in sent if isinstance(m, (Update, Decline))] == [Update], model_id
        os.utime(tmp_path / "artifacts" / model_id / FETCHED_MARK, (1e9 + i, 1e9 + i))  # distinct use times
    held = sorted(p.name for p in (tmp_path / "artifacts").iterdir() if not p.name.startswith("."))
    assert held == sorted(["mine", *ids[-KEEP_FETCHED:]])  # m0 and m1 went, the newest four and "mine" stay
    assert "m0" not in agent.runtime.model_dirs and model[1].model_id in agent.runtime.model_dirs
    again = _fetch(agent, coord, model, "m0", "t-again")  # a removed model is simply fetched again
    assert any(isinstance(m, FetchRequest) for m in again)
    assert [type(m) for m in again if isinstance(m, (Update, Decline))] == [Update]


def test_prune_keeps_what_is_protected_and_ignores_unmarked_and_links(tmp_path):
    for i in range(6):
        folder = tmp_path / f"f{i}"
        folder.mkdir()
        (folder / "manifest.json").write_text("{}")
        (folder / FETCHED_MARK).touch()
        os.utime(folder / FETCHED_MARK, (1e9 + i, 1e9 + i))
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "manifest.json").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "f0")
    assert sorted(prune_fetched(tmp_path, {"f1"}, keep=3)) == ["f0", "f2"]  # f1 in use: kept past its turn
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f1", "f3", "f4", "f5", "link", "plain"]
    assert prune_fetched(tmp_path / "none", set()) == []
