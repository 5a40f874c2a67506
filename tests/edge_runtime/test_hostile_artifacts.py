"""A model can come over the wire, and its manifest is the coordinator's word (the task names
its hash): whatever the manifest lists, the download is refused with a Decline, nothing is
written outside the staging folder, and no error leaves the device's poll. Each case here once
raised out of DeviceAgent.poll (IsADirectoryError, OSError name too long, FileExistsError,
AttributeError, FileNotFoundError) or overwrote the checked manifest in the staging folder."""

from __future__ import annotations

import hashlib
import json

import pytest

from fedge.edge_runtime.kernel.clock import ManualClock
from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import ArtifactFile, Decline, TaskHyper, TrainTask, Update, device_topic
from fedge.edge_runtime.kernel.update_codec import encode_dense
from tests.edge_runtime.one_device import DEVICE, one_device, pump, tree_digest
from tests.tiny_model import build_tiny_model

DATA = b"data"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _transfer(model, tmp_path, manifest: bytes, files: dict[str, bytes]) -> list:
    """A task for model "m2" naming `manifest` by its hash, the manifest, then `files`; what the
    device sent. Raises whatever escapes the device's poll."""
    _, real, runtime = model
    agent, coord = one_device(model, tmp_path / "state", channels=("update", "fetch"), clock=ManualClock())
    sha = hashlib.sha256(manifest).hexdigest()
    task = TrainTask(1, "t1", DEVICE, "m2", 1, encode_dense(runtime.initial("shared")), TaskHyper(epochs=1),
                     manifest_sha256=sha)
    coord.publish(device_topic(DEVICE, "task"), encode_message(task))
    sent = pump(agent, coord)
    return sent + _send_files(agent, coord, manifest, files)


def _send_files(agent, coord, manifest: bytes, files: dict[str, bytes]) -> list:
    """Model "m2"'s manifest, then `files`, one message each; what the device sent."""
    sha, sent = hashlib.sha256(manifest).hexdigest(), []
    items = [ArtifactFile("m2", "manifest.json", sha, manifest, 0, 1 + len(files))]
    items += [ArtifactFile("m2", path, hashlib.sha256(data).hexdigest(), data, i + 1, 1 + len(files))
              for i, (path, data) in enumerate(files.items())]
    for item in items:
        coord.publish(device_topic(DEVICE, "artifact"), encode_message(item))
        sent += pump(agent, coord)
    return sent


def _manifest(model, **changes) -> bytes:
    doc = json.loads((model[0] / "manifest.json").read_bytes())
    return json.dumps({**doc, "model_id": "m2", **changes}).encode()


def _declined(sent) -> Decline:
    (decline,) = [m for m in sent if isinstance(m, Decline)]
    return decline


@pytest.mark.parametrize("paths", [[""], ["."], ["./manifest.json"], ["manifest.json"], ["sub/"], ["/abs"],
                                   ["a" * 256], ["x", "x/y"], ["../x"], ["a\\b"]],
                         ids=lambda p: repr(p)[:20])
def test_a_manifest_listing_a_name_that_is_no_plain_file_is_refused(model, tmp_path, paths):
    files = dict.fromkeys(paths, DATA)
    manifest = _manifest(model, files={p: hashlib.sha256(DATA).hexdigest() for p in paths})
    decline = _declined(_transfer(model, tmp_path, manifest, files))
    assert (decline.reason, decline.stage) == ("artifact", "before"), decline
    assert "not a plain relative file name" in decline.detail
    assert {p.name for p in tmp_path.iterdir()} == {"state"}
    assert not [p for p in (tmp_path / "state" / DEVICE).rglob("*") if "artifacts" in p.parts and p.is_file()]


def test_a_manifest_naming_a_file_with_a_nul_is_refused_at_once(model, tmp_path):
    """No ArtifactFile can carry such a name (the codec refuses NUL), so the download could
    only wait out fetch_timeout_s with the manifest staged: the manifest itself is refused."""
    manifest = _manifest(model, files={"a\x00b": hashlib.sha256(DATA).hexdigest()})
    decline = _declined(_transfer(model, tmp_path, manifest, {}))
    assert (decline.reason, decline.stage) == ("artifact", "before"), decline
    assert "not a plain relative file name" in decline.detail


@pytest.mark.parametrize("text", [b"[]", b"7", b'"manifest"', b'{"format": 1, "files": []}'])
def test_a_manifest_that_is_no_json_object_is_refused(model, tmp_path, text):
    decline = _declined(_transfer(model, tmp_path, text, {}))
    assert decline.reason in ("artifact", "artifact_hash"), decline
    assert "not a valid fedge manifest" in decline.detail or "manifest format" in decline.detail


def test_a_model_whose_manifest_leaves_out_its_initial_params_is_not_installed(model, tmp_path):
    """The manifest checks out and every file it lists arrives; params_init.npz is not among
    them, so the device would load it unverified (or, absent, raise FileNotFoundError)."""
    manifest = _manifest(model, files={"x": hashlib.sha256(DATA).hexdigest()})
    decline = _declined(_transfer(model, tmp_path, manifest, {"x": DATA}))
    assert (decline.reason, decline.stage) == ("artifact_hash", "before"), decline
    assert "params_init.npz is not listed" in decline.detail


def test_a_model_whose_graphs_are_garbage_is_declined(model, tmp_path):
    """Every file is listed and arrives, the hashes match, and the ONNX graphs are garbage: the
    backend's load error (onnxruntime raises plain Exceptions) becomes a Decline."""
    art = model[0]
    real = json.loads((art / "manifest.json").read_bytes())
    files = {rel: (art / rel).read_bytes() for rel in real["files"]}
    files = {rel: (b"garbage" if rel.endswith(".onnx") else data) for rel, data in files.items()}
    manifest = _manifest(model, files={rel: hashlib.sha256(d).hexdigest() for rel, d in files.items()})
    before = tree_digest(art)
    decline = _declined(_transfer(model, tmp_path, manifest, files))
    assert decline.reason in ("artifact", "manifest_mismatch"), decline
    assert tree_digest(art) == before


def test_an_honest_transfer_still_installs(model, tmp_path):
    art = model[0]
    real = json.loads((art / "manifest.json").read_bytes())
    manifest = _manifest(model, files=real["files"])
    sent = _transfer(model, tmp_path, manifest, {rel: (art / rel).read_bytes() for rel in real["files"]})
    assert [type(m).__name__ for m in sent if isinstance(m, (Update, Decline))] == ["Update"]



@pytest.mark.parametrize("how", ["refused", "timed out"])
def test_a_failed_download_leaves_no_staged_files(model, tmp_path, how):
    """Staged files of a download that failed or timed out stayed on disk for good, one folder
    per model id a coordinator named."""
    art = model[0]
    real = json.loads((art / "manifest.json").read_bytes())
    manifest = _manifest(model, files=real["files"])
    first = sorted(real["files"])[0]
    files = {first: (art / first).read_bytes()}
    if how == "refused":
        files["params_init.npz"] = b"tampered"  # its hash does not match: the download is refused
    agent, coord = one_device(model, tmp_path / "state", channels=("update", "fetch"), clock=ManualClock())
    sha = hashlib.sha256(manifest).hexdigest()
    _, _, runtime = model
    coord.publish(device_topic(DEVICE, "task"), encode_message(
        TrainTask(1, "t1", DEVICE, "m2", 1, encode_dense(runtime.initial("shared")), manifest_sha256=sha)))
    items = [ArtifactFile("m2", "manifest.json", sha, manifest, 0, 3)]
    items += [ArtifactFile("m2", rel, hashlib.sha256((art / rel).read_bytes()).hexdigest(), data, 1, 3)
              for rel, data in files.items()]
    for item in items:
        coord.publish(device_topic(DEVICE, "artifact"), encode_message(item))
    sent = pump(agent, coord)
    agent.clock.advance(agent.delivery.fetch_timeout_s + 1)
    sent += pump(agent, coord)
    assert _declined(sent).reason in ("artifact_hash", "artifact_fetch_timeout")
    staged = [p for p in (tmp_path / "state" / DEVICE / "artifacts").rglob("*") if p.is_file()]
    assert staged == []


def test_a_manifest_listing_too_many_files_is_refused(model, tmp_path):
    """Each file fits one message, but a manifest could list thousands of them."""
    from fedge.edge_runtime.fetch import MAX_FILES

    paths = [f"f{i}" for i in range(MAX_FILES + 1)]
    manifest = _manifest(model, files={p: hashlib.sha256(DATA).hexdigest() for p in paths})
    decline = _declined(_transfer(model, tmp_path, manifest, {}))
    assert decline.reason == "artifact" and f"over {MAX_FILES}" in decline.detail


def test_a_model_over_its_byte_budget_is_refused_as_it_arrives(model, tmp_path):
    """Honest files, each verified, but together over the budget: refused on the file that crosses it."""
    from fedge.edge_runtime.fetch import ArtifactDownload
    from fedge.edge_runtime.kernel.errors import ArtifactError

    art = model[0]
    files = json.loads((art / "manifest.json").read_bytes())["files"]
    sizes = sorted((art / rel).stat().st_size for rel in files)
    manifest = (art / "manifest.json").read_bytes()
    model_id = json.loads(manifest)["model_id"]
    budget = sum(sizes) - 1  # one byte short of the whole model
    download = ArtifactDownload(model_id, hashlib.sha256(manifest).hexdigest(), tmp_path / "dest", max_bytes=budget)
    download.accept(ArtifactFile(model_id, "manifest.json", "", manifest, 0, 1 + len(files)))
    items = [ArtifactFile(model_id, rel, hashlib.sha256((art / rel).read_bytes()).hexdigest(),
                          (art / rel).read_bytes(), i + 1, 1 + len(files)) for i, rel in enumerate(sorted(files))]
    with pytest.raises(ArtifactError, match=f"over {budget} bytes"):
        for item in items:
            download.accept(item)
    assert not (tmp_path / "dest").exists()
    whole = ArtifactDownload(model_id, hashlib.sha256(manifest).hexdigest(), tmp_path / "ok", max_bytes=sum(sizes))
    whole.accept(ArtifactFile(model_id, "manifest.json", "", manifest, 0, 1 + len(files)))
    assert [whole.accept(item) for item in items][-1]  # exactly at the budget: installed
    assert (tmp_path / "ok" / "manifest.json").exists()


def test_a_model_placed_by_hand_is_never_replaced_by_a_fetched_one(model, tmp_path):
    """`fedge device run` finds installed models in the same artifacts folder that fetched ones
    go to. A task naming such a model with another manifest hash (a hostile coordinator, or one
    that rebuilt it) had the device fetch that model and rmtree the operator's folder, though
    only folders carrying fedge's marker are ever removed (fetched_models.py)."""
    art = model[0]
    real = json.loads((art / "manifest.json").read_bytes())
    by_hand = tmp_path / "state" / DEVICE / "artifacts" / "m2"
    by_hand.mkdir(parents=True)
    for rel in real["files"]:
        (by_hand / rel).parent.mkdir(parents=True, exist_ok=True)
        (by_hand / rel).write_bytes((art / rel).read_bytes())
    (by_hand / "manifest.json").write_bytes(_manifest(model, files=real["files"]))
    before = tree_digest(by_hand)
    other = json.dumps(json.loads(_manifest(model, files=real["files"])), indent=1).encode()  # another hash
    sent = _transfer(model, tmp_path, other, {rel: (art / rel).read_bytes() for rel in real["files"]})
    assert tree_digest(by_hand) == before
    decline = _declined(sent)
    assert (decline.reason, decline.stage) == ("artifact", "before"), decline
    assert "not fetched by fedge" in decline.detail


def test_tasks_waiting_for_model_downloads_are_bounded(model, tmp_path):
    """Each task waiting for a download held its params (up to max_message_bytes) until the
    model came, and each new model id started a download: a coordinator naming one model over
    and over, or a new one each time, grew the device without bound. Past the limits a task is
    declined as fetch_backlog; the tasks that waited still train once their model arrives."""
    from fedge.edge_runtime.delivery import FETCH_BACKLOG, MAX_DOWNLOADS, TASKS_PER_DOWNLOAD

    art, _, runtime = model
    real = json.loads((art / "manifest.json").read_bytes())
    manifest = _manifest(model, files=real["files"])
    agent, coord = one_device(model, tmp_path / "state", channels=("update", "fetch"), clock=ManualClock())
    params = encode_dense(runtime.initial("shared"))

    def task(task_id: str, model_id: str, sha: str) -> bytes:
        return encode_message(TrainTask(1, task_id, DEVICE, model_id, 1, params, TaskHyper(epochs=1, batch_size=8),
                                        manifest_sha256=sha))

    waiting = [f"t{i}" for i in range(TASKS_PER_DOWNLOAD)]
    for task_id in [*waiting, "over1", "over2"]:
        coord.publish(device_topic(DEVICE, "task"), task(task_id, "m2", hashlib.sha256(manifest).hexdigest()))
    others = [f"m{3 + i}" for i in range(MAX_DOWNLOADS)]  # m2's download and these: one too many
    for model_id in others:
        coord.publish(device_topic(DEVICE, "task"), task(f"for-{model_id}", model_id, "0" * 64))
    declined = {m.task_id: m for m in pump(agent, coord) if isinstance(m, Decline)}
    assert set(declined) == {"over1", "over2", f"for-{others[-1]}"}
    assert {m.reason for m in declined.values()} == {FETCH_BACKLOG}
    sent = _send_files(agent, coord, manifest, {rel: (art / rel).read_bytes() for rel in real["files"]})
    assert sorted(m.task_id for m in sent if isinstance(m, Update)) == waiting


def test_a_model_whose_graphs_fail_when_run_is_declined(model, tmp_path):
    """Every file hashes right and the graphs load, but the manifest (and params_init.npz, and
    the task's params) name shapes the graphs do not take: ORT's InvalidArgument at the first
    step left the device's poll and the task was never answered."""
    import io

    import numpy as np

    art = model[0]
    files = {rel: (art / rel).read_bytes() for rel in json.loads((art / "manifest.json").read_bytes())["files"]}
    doc = json.loads(_manifest(model))
    wider = {"fc1.lora_a": [12, 3], "fc1.lora_b": [3, 8]}  # rank 3; the graphs were built for rank 2
    for param in doc["params"]:
        param["shape"] = wider.get(param["name"], param["shape"])
    arrays = {k: np.zeros(wider[k], np.float32) if k in wider else v
              for k, v in np.load(io.BytesIO(files["params_init.npz"])).items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    files["params_init.npz"] = buf.getvalue()
    doc["files"] = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
    manifest = json.dumps(doc).encode()
    shared = {p["name"]: arrays[p["name"]] for p in doc["params"] if p["role"] == "shared"}
    agent, coord = one_device(model, tmp_path / "state", channels=("update", "fetch"), clock=ManualClock())
    coord.publish(device_topic(DEVICE, "task"), encode_message(TrainTask(
        1, "t1", DEVICE, "m2", 1, encode_dense(shared), TaskHyper(epochs=1), manifest_sha256=hashlib.sha256(
            manifest).hexdigest())))
    decline = _declined(pump(agent, coord) + _send_files(agent, coord, manifest, files))
    assert (decline.reason, decline.stage) == ("training_failed", "during"), decline
    assert "graphs fail when run" in decline.detail and "InvalidArgument" in decline.detail
