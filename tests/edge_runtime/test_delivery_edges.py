"""Model delivery at its documented edges, on ModelDelivery itself with a stand-in runtime:
TASKS_PER_DOWNLOAD tasks may wait for one download and MAX_DOWNLOADS downloads may run (one
more is fetch_backlog), a download times out only past fetch_timeout_s and its staged files go
with it (mutation5-device audit)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from fedge.edge_runtime import fetch
from fedge.edge_runtime.delivery import FETCH_BACKLOG, MAX_DOWNLOADS, TASKS_PER_DOWNLOAD, ModelDelivery
from fedge.edge_runtime.fetch import MAX_FILES, NAME_MAX, ArtifactDownload
from fedge.edge_runtime.fetched_models import FETCHED_MARK, KEEP_FETCHED, prune_fetched
from fedge.edge_runtime.kernel.codec import decode_message
from fedge.edge_runtime.kernel.errors import ArtifactError, ArtifactIntegrityError
from fedge.edge_runtime.kernel.manifest import MANIFEST_FORMAT
from fedge.edge_runtime.kernel.protocol import ArtifactFile, FetchRequest, TrainTask
from fedge.edge_runtime.task import Refused

TIMEOUT = 30.0  # seconds


class _Runtime:
    device_id = "d1"

    def __init__(self):
        self.model_dirs: dict[str, Path] = {}

    def add_model(self, model_id, directory):
        self.model_dirs[model_id] = Path(directory)

    def forget_model(self, model_id, directory):
        self.model_dirs.pop(model_id, None)


class _Transport:
    def subscribe(self, _):
        pass

    def unsubscribe(self, _):
        pass


def _manifest(model_id: str, files: dict[str, bytes]) -> bytes:
    return json.dumps({"format": MANIFEST_FORMAT, "model_id": model_id, "name": "x", "spec": {}, "params": [],
                       "input_shape": [1], "embedding_shape": [1], "heads": [],
                       "files": {k: hashlib.sha256(v).hexdigest() for k, v in files.items()}}).encode()


def _delivery(tmp_path) -> tuple[ModelDelivery, list]:
    sent = []
    delivery = ModelDelivery(_Runtime(), _Transport(), lambda ch, payload: sent.append(payload), tmp_path / "art",
                             1 << 20, TIMEOUT, 5.0)
    return delivery, sent


def _task(n: int, model_id: str, manifest: bytes = b"{}") -> TrainTask:
    return TrainTask(1, f"t{n}", "d1", model_id, 1, b"", manifest_sha256=hashlib.sha256(manifest).hexdigest())


def test_exactly_tasks_per_download_wait_for_one_model_and_one_more_is_fetch_backlog(tmp_path):
    delivery, _ = _delivery(tmp_path)
    answers = [delivery.model_ready(_task(n, "m1"), 0.0) for n in range(TASKS_PER_DOWNLOAD + 1)]
    assert answers[:TASKS_PER_DOWNLOAD] == [False] * TASKS_PER_DOWNLOAD
    assert isinstance(answers[-1], Refused) and answers[-1].reason == FETCH_BACKLOG
    assert len(delivery.waiting["m1"].tasks) == TASKS_PER_DOWNLOAD


def test_exactly_max_downloads_run_and_one_more_model_is_fetch_backlog(tmp_path):
    delivery, sent = _delivery(tmp_path)
    answers = [delivery.model_ready(_task(n, f"m{n}"), 0.0) for n in range(MAX_DOWNLOADS + 1)]
    assert answers[:MAX_DOWNLOADS] == [False] * MAX_DOWNLOADS
    assert isinstance(answers[-1], Refused) and answers[-1].reason == FETCH_BACKLOG
    assert sorted(delivery.waiting) == [f"m{n}" for n in range(MAX_DOWNLOADS)] and len(sent) == MAX_DOWNLOADS


def test_a_download_times_out_only_past_fetch_timeout_and_its_staged_files_go(tmp_path):
    files = {"a.bin": b"a", "b.bin": b"b"}
    manifest = _manifest("m1", files)
    delivery, _ = _delivery(tmp_path)
    assert delivery.model_ready(_task(0, "m1", manifest), 100.0) is False
    sha = hashlib.sha256(manifest).hexdigest()
    assert delivery.on_artifact(ArtifactFile("m1", "manifest.json", sha, manifest, 0, 3)) == ([], [])
    staging = delivery.waiting["m1"].download.staging
    assert (staging / "manifest.json").is_file()
    assert list(delivery.timeouts(100.0 + TIMEOUT)) == []  # exactly fetch_timeout_s: still waiting
    (late,) = list(delivery.timeouts(100.0 + TIMEOUT + 0.001))
    assert late[0].task_id == "t0" and late[1].reason == "artifact_fetch_timeout"
    assert not staging.exists() and delivery.waiting == {}


def _download(tmp_path, files: dict[str, bytes], max_bytes: int = 1 << 20) -> ArtifactDownload:
    manifest = _manifest("m1", files)
    download = ArtifactDownload("m1", hashlib.sha256(manifest).hexdigest(), tmp_path / "m1", max_bytes)
    sha = hashlib.sha256(manifest).hexdigest()
    assert download.accept(ArtifactFile("m1", "manifest.json", sha, manifest, 0, 1 + len(files))) is (not files)
    return download


def _send(download: ArtifactDownload, files: dict[str, bytes]) -> list[bool]:
    return [download.accept(ArtifactFile("m1", k, hashlib.sha256(v).hexdigest(), v, i + 1, 1 + len(files)))
            for i, (k, v) in enumerate(files.items())]


def test_a_model_of_exactly_max_bytes_installs_and_one_byte_more_is_refused(tmp_path):
    files = {"a.bin": b"aa", "b.bin": b"bbb"}
    assert _send(_download(tmp_path / "at", files, max_bytes=5), files) == [False, True]
    assert (tmp_path / "at" / "m1" / "b.bin").read_bytes() == b"bbb"
    over = _download(tmp_path / "over", files, max_bytes=4)
    with pytest.raises(ArtifactError, match="over 4 bytes"):
        _send(over, files)


def test_a_manifest_of_exactly_max_files_is_taken_and_one_more_is_refused(tmp_path):
    files = {f"f{i}": bytes([i]) for i in range(MAX_FILES)}
    assert _send(_download(tmp_path / "at", files), files)[-1] is True
    with pytest.raises(ArtifactError, match="files, over"):
        _download(tmp_path / "over", {**files, "one-more": b"x"})


def test_the_longest_name_the_manifest_takes_can_be_staged_and_one_byte_more_is_refused_at_the_manifest(tmp_path):
    longest = NAME_MAX - len(".") - len(".tmp-") - len("4194304")  # staged as .<name>.tmp-<pid>; pid_max 2**22
    files = {"n" * longest: b"x"}
    assert _send(_download(tmp_path / "at", files), files) == [True]
    assert (tmp_path / "at" / "m1" / ("n" * longest)).read_bytes() == b"x"
    with pytest.raises(ArtifactError, match="plain"):  # was taken, then failed staging after the files before it
        _download(tmp_path / "over", {"n" * (longest + 1): b"x"})


def test_a_file_changed_on_disk_after_its_check_is_caught_by_the_final_reread(tmp_path, monkeypatch):
    files = {"a.bin": b"aa"}
    download = _download(tmp_path, files)
    real = fetch._write
    monkeypatch.setattr(fetch, "_write", lambda path, data: real(path, data if path.name == "manifest.json" else b"zz"))
    with pytest.raises(ArtifactError):  # a bad sector, or another writer: what runs must be what was checked
        _send(download, files)
    assert not (tmp_path / "m1").exists()


def test_a_manifest_that_is_not_the_one_the_task_names_is_refused_before_anything_is_staged(tmp_path):
    files = {"a.bin": b"aa"}
    named, other = _manifest("m1", files), _manifest("m1", {"a.bin": b"bb"})
    download = ArtifactDownload("m1", hashlib.sha256(named).hexdigest(), tmp_path / "m1")
    with pytest.raises(ArtifactIntegrityError):
        download.accept(ArtifactFile("m1", "manifest.json", hashlib.sha256(other).hexdigest(), other, 0, 2))
    assert download.manifest is None and not download.staging.exists()


def test_a_file_that_does_not_match_the_manifest_is_refused_when_it_comes_not_written(tmp_path):
    files = {"a.bin": b"aa", "b.bin": b"bb"}
    download = _download(tmp_path, files)
    with pytest.raises(ArtifactIntegrityError):
        download.accept(ArtifactFile("m1", "a.bin", hashlib.sha256(b"zz").hexdigest(), b"zz", 1, 3))
    assert not (download.staging / "a.bin").exists() and download.missing() == ("a.bin", "b.bin")


def _round_task() -> TrainTask:
    return TrainTask(1, "t0", "d1", "m1", 1, b"", round_model_sha256="ab" * 32)


def _inline_asks(sent) -> list[str]:
    return [m.task_id for m in map(decode_message, sent) if isinstance(m, FetchRequest) and m.task_id]


def test_a_round_model_wait_asks_inline_past_model_wait_and_gives_up_past_both_waits(tmp_path):
    delivery, sent = _delivery(tmp_path)  # model_wait_s 5, fetch_timeout_s 30
    assert delivery.resolve_params(_round_task(), 0.0) is None
    assert list(delivery.timeouts(5.0)) == [] and _inline_asks(sent) == []
    assert list(delivery.timeouts(5.001)) == [] and _inline_asks(sent) == ["t0"]
    delivery.on_reconnect()  # the broker may have lost that request: asked again
    assert _inline_asks(sent) == ["t0", "t0"]
    assert list(delivery.timeouts(35.0)) == []
    ((task, refused),) = list(delivery.timeouts(35.001))
    assert task.task_id == "t0" and refused.reason == "round_model_timeout"


def test_a_model_being_fetched_again_is_not_pruned_when_another_download_completes(tmp_path):
    delivery, _ = _delivery(tmp_path)
    art = tmp_path / "art"
    for age, model_id in enumerate([f"m{KEEP_FETCHED + 1 - i}" for i in range(KEEP_FETCHED)]):  # m2 the oldest
        (art / model_id).mkdir(parents=True)
        (art / model_id / "manifest.json").write_text("{}")
        (art / model_id / FETCHED_MARK).touch()
        os.utime(art / model_id / FETCHED_MARK, (1000 - age, 1000 - age))
    assert delivery.model_ready(_task(0, "m2", _manifest("m2", {})), 0.0) is False  # its hash changed: fetched again
    files = {"a.bin": b"aa"}
    manifest = _manifest("m1", files)
    assert delivery.model_ready(_task(1, "m1", manifest), 0.0) is False
    delivery.on_artifact(ArtifactFile("m1", "manifest.json", hashlib.sha256(manifest).hexdigest(), manifest, 0, 2))
    ready, _ = delivery.on_artifact(ArtifactFile("m1", "a.bin", hashlib.sha256(b"aa").hexdigest(), b"aa", 1, 2))
    assert [t.task_id for t in ready] == ["t1"]
    assert sorted(p.name for p in art.iterdir() if not p.name.startswith(".")) == ["m1", "m2", "m3", "m4", "m5"]
    assert "m2" in delivery.waiting


def test_a_fetched_model_a_task_uses_is_the_last_to_go(tmp_path):
    delivery, _ = _delivery(tmp_path)
    art = tmp_path / "art"
    for age, model_id in enumerate(["new", "old"]):
        (art / model_id).mkdir(parents=True)
        (art / model_id / "manifest.json").write_text("{}")
        (art / model_id / FETCHED_MARK).touch()
        os.utime(art / model_id / FETCHED_MARK, (1000 - age, 1000 - age))
    assert delivery.model_ready(_task(0, "old", b"{}"), 0.0) is True  # installed, its hash matches: used now
    assert prune_fetched(art, set(), keep=1) == ["new"]


def test_a_kept_manifest_that_cannot_be_read_is_fetched_again_or_refused_by_name(tmp_path):
    """A folder where a model's manifest.json goes (a disk fault, a hand edit) made the manifest
    hash raise IsADirectoryError out of model_ready, and so out of the task; now that copy is
    passed over as one that does not match: fedge's own fetched copy is fetched again, and a
    folder fedge did not fetch is refused by name and left alone."""
    delivery, sent = _delivery(tmp_path)
    (tmp_path / "art" / "m1" / "manifest.json").mkdir(parents=True)
    refused = delivery.model_ready(_task(1, "m1"), 0.0)
    assert isinstance(refused, Refused) and "does not replace it" in refused.detail and not sent
    assert (tmp_path / "art" / "m1" / "manifest.json").is_dir()
    (tmp_path / "art" / "m1" / FETCHED_MARK).touch()  # fedge's own
    assert delivery.model_ready(_task(2, "m1"), 0.0) is False  # waits for the download it asked for
    assert [type(decode_message(p)) for p in sent] == [FetchRequest]
