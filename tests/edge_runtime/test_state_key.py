"""A device's private state belongs to the model contents it was trained with, not to a model id.

The model id is the coordinator's word (and the name of a folder an operator can fill with
another build). With the same id and the same shapes but another backbone, the device once
went on training its old personal head (and optimizer state, residuals, c_i) on the new
features, and `fedge device export` joined that head with the new backbone. The oracle for each
case: a device that never saw the old contents, given the same task, sends the same update.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedge.edge_runtime import superseded
from fedge.edge_runtime.device import DeviceRuntime, LocalData
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.errors import ArtifactIntegrityError
from fedge.edge_runtime.kernel.manifest import load_manifest, sha256_file, state_key
from fedge.edge_runtime.kernel.protocol import CompressionSpec, Decline, TaskHyper, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.secagg.messages import SecAggSpec, SecAggTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.model_runtime import ModelRuntime
from fedge.edge_runtime.store import DeviceStore
from fedge.edge_runtime.superseded import KEEP_SUPERSEDED, PREFIX
from fedge.models.build import build_artifacts
from fedge.models.spec import mlp_spec
from fedge.tools.cli import main
from tests.edge_runtime.one_device import DEVICE, TickingClock, one_device, pump, reply_to
from tests.tiny_model import build_tiny_model

FEATURES, CLASSES = 12, 3


def _spec(seed: int):
    # fc1 frozen: the backbone (backbone.onnx); fc2 LoRA; a global and a personal head
    return mlp_spec(FEATURES, CLASSES, hidden=(16, 8), modes=("frozen", "lora"), lora_rank=2, init_seed=seed)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(A's folder, A's folder with B's backbone under A's id): same id, same shapes, same
    initial values of every param, another backbone."""
    root = tmp_path_factory.mktemp("models")
    a = build_artifacts(_spec(0), root / "a", ort_training=False)
    build_artifacts(_spec(1), root / "b", ort_training=False)
    swapped = root / "a-with-b-backbone"
    shutil.copytree(root / "a", swapped)
    shutil.copy(root / "b" / "backbone.onnx", swapped / "backbone.onnx")
    doc = json.loads((swapped / "manifest.json").read_text())
    doc["files"]["backbone.onnx"] = sha256_file(swapped / "backbone.onnx")
    (swapped / "manifest.json").write_text(json.dumps(doc, indent=2))
    assert load_manifest(swapped).model_id == a.model_id
    assert sha256_file(root / "a" / "backbone.onnx") != sha256_file(swapped / "backbone.onnx")
    return a.model_id, root / "a", swapped


def _data() -> LocalData:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, 40)
    return LocalData(x[:32], y[:32], x[32:], y[32:])


def _task(model_id: str, folder, task_id: str) -> TrainTask:
    shared = ModelRuntime(folder).initial("shared")
    return TrainTask(round_id=int(task_id[1:]), task_id=task_id, device_id="devA", model_id=model_id,
                     model_version=0, params=encode_dense(shared), compression=CompressionSpec(), seed=4,
                     hyper=TaskHyper(epochs=3, batch_size=8, lr=0.2, optimizer="sgd", keep_optimizer_state=True))


def _device(state, model_id, folder) -> DeviceRuntime:
    return DeviceRuntime("devA", _data(), {model_id: folder}, state, backend="portable", seed=1)


def _train(device, task) -> Update:
    reply = device.handle_task(task)
    assert isinstance(reply, Update), reply
    return reply


def _fresh_update(tmp_path, model_id, folder, task) -> bytes:
    """The oracle: the payload of a device that only ever had `folder`'s contents."""
    return _train(_device(tmp_path / "fresh", model_id, folder), task).payload


def test_the_key_covers_the_backbone_and_not_the_build(models, tmp_path):
    model_id, a, swapped = models
    key = ModelRuntime(a).state_key
    assert ModelRuntime(swapped).state_key != key
    again = build_artifacts(_spec(0), tmp_path / "again", ort_training=False)  # the same model, built again
    assert ModelRuntime(tmp_path / "again").state_key == key
    manifest = load_manifest(a)  # a frozen initial value changed under the same id and backbone
    frozen = manifest.by_role("frozen")[-1].name
    values = {**ModelRuntime(a).init_values}
    values[frozen] = values[frozen] + 1
    assert state_key(manifest, values) != key
    assert again.model_id == model_id


def test_the_same_id_with_another_backbone_starts_the_state_afresh(models, tmp_path, caplog):
    model_id, a, swapped = models
    state = tmp_path / "state"
    device = _device(state, model_id, a)
    _train(device, _task(model_id, a, "t1"))
    trained = DeviceStore(state / "devA", model_id).load_personal()

    device.add_model(model_id, swapped)  # what the delivery does after fetching the new contents
    task = _task(model_id, swapped, "t2")
    assert _train(device, task).payload == _fresh_update(tmp_path, model_id, swapped, task)
    store = DeviceStore(state / "devA", model_id)
    assert [p.name for p in store.dir.glob(f"{PREFIX}*")] == [f"{PREFIX}1-{ModelRuntime(a).state_key[:16]}"]
    assert "state.npz was written for model contents" in caplog.text and "starts afresh" in caplog.text

    device.add_model(model_id, a)  # the old contents again: their state comes back
    device.evaluate(model_id, ModelRuntime(a).initial("shared"))
    for name, value in trained.items():
        np.testing.assert_array_equal(DeviceStore(state / "devA", model_id).load_personal()[name], value)


def test_an_artifact_folder_replaced_on_disk_is_loaded_again(models, tmp_path):
    """The operator puts another build in the folder the device runs: its loaded copy (manifest,
    initial values, cached embeddings) and the state trained on the old files are not used."""
    model_id, a, swapped = models
    folder = tmp_path / "installed"
    shutil.copytree(a, folder)
    device = _device(tmp_path / "state", model_id, folder)
    _train(device, _task(model_id, folder, "t1"))
    shutil.rmtree(folder)
    shutil.copytree(swapped, folder)
    task = _task(model_id, folder, "t2")
    assert _train(device, task).payload == _fresh_update(tmp_path, model_id, folder, task)


def test_a_backbone_swapped_under_an_unchanged_manifest_is_refused(models, tmp_path):
    model_id, a, swapped = models
    folder = tmp_path / "installed"
    shutil.copytree(a, folder)
    runtime = ModelRuntime(folder)
    shutil.copy(swapped / "backbone.onnx", folder / "backbone.onnx")
    with pytest.raises(ArtifactIntegrityError, match="backbone.onnx"):
        runtime.embed(_data().x_train)


def test_export_refuses_a_state_written_for_other_contents(models, tmp_path, capsys):
    model_id, a, swapped = models
    state = tmp_path / "state"
    folder = state / "devA" / "artifacts" / model_id
    shutil.copytree(a, folder)
    device = _device(state, model_id, folder)
    _train(device, _task(model_id, folder, "t1"))
    shutil.rmtree(folder)
    shutil.copytree(swapped, folder)
    (tmp_path / "dev.toml").write_text(f'device_id = "devA"\nstate_dir = "{state}"\n[data]\nnpz = "x.npz"\n')
    args = ["device", "export", "--config", str(tmp_path / "dev.toml"), "--out", str(tmp_path / "m.onnx")]
    assert main(args) == 2
    assert "written for other contents" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
    _train(device, _task(model_id, folder, "t2"))  # trained on these contents: the export is theirs
    assert main(args) == 0


def _key(n: int) -> str:
    return f"{n:02x}" * 16


def test_old_contents_are_kept_as_documented_and_only_fedge_files_deleted(tmp_path):
    last = KEEP_SUPERSEDED + 3  # contents 1 .. last - 1 are set aside in turn; `last` is in use
    for n in range(1, last + 1):
        DeviceStore(tmp_path, "m", key=_key(n)).save_personal({"w": np.full(3, n, np.float32)})
        if n == 2:  # a person's file in the folder of the first contents set aside, and one beside it
            (tmp_path / "m" / f"{PREFIX}1-{_key(1)[:16]}" / "notes.txt").write_text("mine")
            (tmp_path / "m" / f"{PREFIX}mine").mkdir()
    kept = sorted(p.name for p in (tmp_path / "m").glob(f"{PREFIX}*"))
    newest = [f"{PREFIX}{n}-{_key(n)[:16]}" for n in range(last - KEEP_SUPERSEDED, last)]
    assert kept == sorted([f"{PREFIX}1-{_key(1)[:16]}", f"{PREFIX}mine", *newest])  # 1 for the person's file
    assert [p.name for p in (tmp_path / "m" / f"{PREFIX}1-{_key(1)[:16]}").iterdir()] == ["notes.txt"]
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"state.npz", *kept}
    for n in range(last - KEEP_SUPERSEDED, last):  # each kept whole, for its own contents
        aside = DeviceStore(tmp_path / "m", f"{PREFIX}{n}-{_key(n)[:16]}")
        np.testing.assert_array_equal(aside.load_personal()["w"], np.full(3, n))


def test_a_state_from_before_keys_is_kept_and_takes_the_key(tmp_path):
    old = DeviceStore(tmp_path, "m")  # an older fedge: no key recorded
    old.save_personal({"w": np.full(3, 2.0, np.float32)})
    store = DeviceStore(tmp_path, "m", key=_key(7))
    np.testing.assert_array_equal(store.load_personal()["w"], np.full(3, 2.0))
    store.save_personal({"w": np.full(3, 5.0, np.float32)})
    assert DeviceStore(tmp_path, "m", key=_key(8)).load_personal() is None


def test_a_backbone_the_manifest_does_not_list_is_refused(models, tmp_path):
    _, a, _ = models
    folder = tmp_path / "installed"
    shutil.copytree(a, folder)
    doc = json.loads((folder / "manifest.json").read_text())
    del doc["files"]["backbone.onnx"]
    (folder / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ArtifactIntegrityError, match="not listed"):
        ModelRuntime(folder).embed(_data().x_train)


def test_a_secure_round_does_not_add_a_residual_written_for_other_contents(tmp_path):
    """The participant reads the residual before training; it was read from the store whatever
    contents wrote it, and added to what the device sent."""
    model = build_tiny_model(tmp_path / "tiny")
    _, manifest, runtime = model
    like = runtime.initial("shared")
    other = DeviceStore(tmp_path / "state" / DEVICE, manifest.model_id, key=_key(9))  # other contents, same id
    other.save_residual({k: np.full(v.shape, 1000.0, np.float32) for k, v in like.items()})
    agent, coord = one_device(model, tmp_path / "state", clock=TickingClock())
    task = TrainTask(1, "t1", DEVICE, manifest.model_id, 1, encode_dense(like), TaskHyper(epochs=1, batch_size=8),
                     CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    coord.publish(device_topic(DEVICE, "task"), encode_message(SecAggTask(task, SecAggSpec(), sharing=2)))
    assert not [m for m in pump(agent, coord) if isinstance(m, Decline)]
    residual = DeviceStore(tmp_path / "state" / DEVICE, manifest.model_id).load_residual()
    assert residual is not None and max(float(np.abs(v).max()) for v in residual.values()) < 10


def test_a_coordinator_announcing_the_same_id_with_other_contents_gets_a_fresh_state(models, tmp_path, caplog):
    """Through the agent: the task names the same model id with another manifest's hash; the
    device fetches it, verifies it, and trains it from a fresh state, as a device that never
    had the old contents does."""
    from fedge.edge_runtime.kernel.protocol import ArtifactFile, FetchRequest

    model_id, a, swapped = models
    agent, coord = one_device((a, load_manifest(a), None), tmp_path / "state", channels=("update", "fetch"),
                              clock=TickingClock())
    assert isinstance(reply_to(agent, coord, _task(model_id, a, "t1")), Update)
    manifest = (swapped / "manifest.json").read_bytes()
    task = dataclasses.replace(_task(model_id, swapped, "t2"), manifest_sha256=hashlib.sha256(manifest).hexdigest())
    coord.publish(device_topic(DEVICE, "task"), encode_message(task))
    assert any(isinstance(m, FetchRequest) for m in pump(agent, coord))
    files = {"manifest.json": manifest, **{rel: (swapped / rel).read_bytes() for rel in load_manifest(swapped).files}}
    sent = []
    for i, (rel, data) in enumerate(files.items()):
        item = ArtifactFile(model_id, rel, hashlib.sha256(data).hexdigest(), data, i, len(files))
        coord.publish(device_topic(DEVICE, "artifact"), encode_message(item))
        sent += pump(agent, coord)
    (update,) = [m for m in sent if isinstance(m, (Update, Decline))]
    fresh, fresh_coord = one_device((swapped, load_manifest(swapped), None), tmp_path / "fresh", clock=TickingClock())
    assert update.payload == reply_to(fresh, fresh_coord, task).payload
    assert "starts afresh" in caplog.text


def test_a_file_by_the_name_of_the_next_aside_folder_is_left_and_the_next_number_taken(models, tmp_path):
    """A file at superseded-1-<key>: the device declined every task of the new contents with
    "... is in the way", and its check-ins said its state was fine: parked, un-parked, declined."""
    model_id, a, swapped = models
    state = tmp_path / "state"
    device = _device(state, model_id, a)
    _train(device, _task(model_id, a, "t1"))
    trained = DeviceStore(state / "devA", model_id).load_personal()
    stray = state / "devA" / model_id / f"{PREFIX}1-{ModelRuntime(a).state_key[:16]}"
    stray.write_bytes(b"a person's file")

    device.add_model(model_id, swapped)
    task = _task(model_id, swapped, "t2")
    assert _train(device, task).payload == _fresh_update(tmp_path, model_id, swapped, task)
    assert stray.read_bytes() == b"a person's file"
    aside = DeviceStore(stray.parent, stray.name.replace(f"{PREFIX}1-", f"{PREFIX}2-"))
    for name, value in trained.items():
        np.testing.assert_array_equal(aside.load_personal()[name], value)
    assert device.check_in().eligible


@pytest.mark.parametrize("fails", ["move", "mkdir"])
def test_a_state_that_cannot_be_set_aside_keeps_the_device_parked_until_it_can(models, tmp_path, monkeypatch, fails):
    """Setting the old contents' state aside fails (a read-only folder; root can write to any, so
    the move, or making its folder, fails here by hand): the task is declined bad_state, and every
    check-in says so until it can be set aside. The check-ins opened a store without the key, found
    that state readable and un-parked the device at once; a failed mkdir escaped as a bare OSError;
    each failed move left one more empty folder."""
    model_id, a, swapped = models
    state = tmp_path / "state"
    device = _device(state, model_id, a)
    _train(device, _task(model_id, a, "t1"))
    device.add_model(model_id, swapped)
    real_replace, real_mkdir = os.replace, Path.mkdir

    def replace(src, dst):
        if PREFIX in str(dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src))
        return real_replace(src, dst)

    def mkdir(path, *args, **kwargs):
        if path.name.startswith(PREFIX):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_mkdir(path, *args, **kwargs)

    if fails == "move":
        monkeypatch.setattr(superseded.os, "replace", replace)
    else:
        monkeypatch.setattr(Path, "mkdir", mkdir)
    reply = device.handle_task(_task(model_id, swapped, "t2"))
    assert isinstance(reply, Decline) and reply.reason == "bad_state" and "Read-only file system" in reply.detail
    for _ in range(2):
        check_in = device.check_in()
        assert (check_in.eligible, check_in.reason) == (False, "bad_state")
    assert list((state / "devA" / model_id).glob(f"{PREFIX}*")) == []

    monkeypatch.undo()  # the folder made writable: the next check-in sets the state aside and says so
    assert device.check_in().eligible
    aside = state / "devA" / model_id / f"{PREFIX}1-{ModelRuntime(a).state_key[:16]}"
    assert DeviceStore(aside.parent, aside.name).load_personal() is not None
    task = _task(model_id, swapped, "t3")
    assert _train(device, task).payload == _fresh_update(tmp_path, model_id, swapped, task)


def test_a_check_in_while_a_task_runs_leaves_the_state_files_where_they_are(models, tmp_path, monkeypatch):
    """A check-in asked with a key sets state aside (supersede) as a task would: while a task
    holds the runtime's lock it moved state files under that task. Now the check-in skips the
    move (and keeps saying bad_state) until the lock is free, and never waits for it."""
    model_id, a, swapped = models
    state = tmp_path / "state"
    device = _device(state, model_id, a)
    _train(device, _task(model_id, a, "t1"))
    device.add_model(model_id, swapped)
    real_replace = os.replace

    def replace(src, dst):
        if PREFIX in str(dst):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src))
        return real_replace(src, dst)

    monkeypatch.setattr(superseded.os, "replace", replace)
    assert device.handle_task(_task(model_id, swapped, "t2")).reason == "bad_state"
    monkeypatch.undo()  # the folder writable again, but a task runs
    folder = state / "devA" / model_id
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with device._busy:
        check_in = device.check_in()
        assert (check_in.eligible, check_in.reason) == (False, "bad_state")
        assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
        assert list(folder.glob(f"{PREFIX}*")) == []
    assert device.check_in().eligible  # the task done: the check-in sets the state aside
    assert not (folder / "state.npz").exists() and len(list(folder.glob(f"{PREFIX}*"))) == 1
