"""Artifact serving: manifest first, only manifest-listed files, hashes checked, one transfer
per device per interval; plus manifest_sha256 in tasks and the retained Announcement."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib

import msgpack
import numpy as np
import pytest

from fedge.coordinator.artifacts import ArtifactServer
from fedge.edge_runtime.agent import DeviceAgent
from fedge.edge_runtime.device import DeviceRuntime
from fedge.edge_runtime.kernel.codec import HEADER_SIZE, MAGIC, decode_message, encode_message
from fedge.edge_runtime.kernel.errors import ArtifactError, ConfigError
from fedge.edge_runtime.kernel.manifest import MANIFEST_FILE
from fedge.edge_runtime.kernel.protocol import (
    ANNOUNCE_TOPIC,
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    Announcement,
    ArtifactFile,
    FetchRequest,
    device_topic,
)
from tests.coordinator.fleet import ManualDevice, local_data, make_fleet
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wire_fields(msg) -> dict:
    frame = encode_message(msg)
    return msgpack.unpackb(frame[HEADER_SIZE:-4], raw=False)


def _frame_of(cls, fields: dict) -> bytes:
    """A well-formed frame (length, CRC) around fields the codec's encoder would refuse."""
    code = {c: k for k, c in MESSAGE_TYPES.items()}[cls]
    body = msgpack.packb(fields, use_bin_type=True)
    head = struct.pack("<4sHBI", MAGIC, SCHEMA_VERSION, code, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head))


def _served(model, tmp_path, **config):
    art = model[0]
    fleet = make_fleet(model, tmp_path, artifacts_dir=str(art), fetch_interval_s=60.0, **config)
    dev = ManualDevice(fleet, "pi", 5)
    dev.t.subscribe(device_topic("pi", "artifact"))
    fleet.drain()
    dev.receive()
    dev.inbox.clear()
    return fleet, dev


def _fetch(fleet, dev, *files, model_id=None, on=None) -> list[ArtifactFile]:
    request = FetchRequest("pi", model_id or fleet.coordinator.manifest.model_id, tuple(files))
    dev.send(encode_message(request), on=on, channel="fetch")
    fleet.drain()
    dev.receive()
    got = [m for m in dev.inbox if isinstance(m, ArtifactFile)]
    dev.inbox.clear()
    return got


def test_a_fetch_gets_the_manifest_first_then_the_listed_files_with_their_hashes(model, tmp_path):
    art, manifest, _ = model
    fleet, dev = _served(model, tmp_path)
    got = _fetch(fleet, dev)  # no names: every file of the model
    manifest_bytes = (art / MANIFEST_FILE).read_bytes()
    assert got[0].path == MANIFEST_FILE and sorted(f.path for f in got[1:]) == sorted(manifest.files)
    assert [(f.index, f.count) for f in got] == [(i, len(got)) for i in range(len(got))]
    assert got[0].data == manifest_bytes and got[0].sha256 == _sha(manifest_bytes)
    for f in got[1:]:
        assert f.data == (art / f.path).read_bytes()
        assert f.sha256 == _sha(f.data) == manifest.files[f.path]
        assert f.model_id == manifest.model_id
    m = fleet.coordinator.metrics
    assert m.transfers._value.get() == 1
    assert m.artifact_bytes._value.get() == sum(len(f.data) for f in got)

    fleet.clock.advance(61.0)
    got = _fetch(fleet, dev, "eval.onnx", MANIFEST_FILE, "eval.onnx")  # duplicates collapse
    assert [f.path for f in got] == [MANIFEST_FILE, "eval.onnx"]


@pytest.mark.parametrize("files,reason", [
    (("../manifest.json",), "unknown_artifact"),
    (("/etc/passwd",), "unknown_artifact"),
    (("eval.onnx", "../../../../etc/hostname"), "unknown_artifact"),
    (("eval.onnx/..",), "unknown_artifact"),
])
def test_names_outside_the_manifest_are_refused_and_nothing_is_sent(model, tmp_path, files, reason):
    fleet, dev = _served(model, tmp_path)
    assert _fetch(fleet, dev, *files) == []
    assert fleet.coordinator.rejections == {reason: 1}
    assert _fetch(fleet, dev, "eval.onnx")  # the refused request did not use up the device's turn


def test_a_name_with_a_nul_is_refused_as_malformed_before_any_lookup(model, tmp_path):
    """The codec refuses a NUL in any wire text (encode_message would not even build this frame)."""
    fleet, dev = _served(model, tmp_path)
    fields = _wire_fields(FetchRequest("pi", fleet.coordinator.manifest.model_id, ("params_init.npz",)))
    fields["files"] = ["params_init.npz\0"]
    dev.send(_frame_of(FetchRequest, fields), channel="fetch")
    fleet.drain()
    dev.receive()
    assert not [m for m in dev.inbox if isinstance(m, ArtifactFile)]
    assert fleet.coordinator.rejections == {"malformed": 1}
    assert _fetch(fleet, dev, "eval.onnx")  # the service goes on


def test_unknown_model_rate_limit_and_foreign_topics(model, tmp_path):
    fleet, dev = _served(model, tmp_path)
    assert _fetch(fleet, dev, model_id="some-other-model") == []
    assert fleet.coordinator.rejections == {"unknown_model": 1}
    assert _fetch(fleet, dev, "eval.onnx")
    assert _fetch(fleet, dev, "eval.onnx") == []  # one transfer per device per 60 s
    fleet.clock.advance(59.0)
    assert _fetch(fleet, dev, "eval.onnx") == []
    assert fleet.coordinator.rejections["rate_limited"] == 2
    fleet.clock.advance(1.0)
    assert _fetch(fleet, dev, "eval.onnx")
    # A request naming one device on another device's topic is ignored, not served.
    fleet.clock.advance(100.0)
    other = ManualDevice(fleet, "intruder", 1)
    fleet.drain()
    other.send(encode_message(FetchRequest("pi", fleet.coordinator.manifest.model_id)), channel="fetch")
    fleet.drain()
    dev.receive()
    assert not [m for m in dev.inbox if isinstance(m, ArtifactFile)]
    assert fleet.coordinator.metrics.transfers._value.get() == 2
    assert fleet.coordinator.round is None and fleet.coordinator.begin_round()  # service goes on


def test_a_file_corrupted_on_disk_is_not_shipped(model, tmp_path):
    art = tmp_path / "model"
    shutil.copytree(model[0], art)
    fleet = make_fleet(model, tmp_path, artifacts_dir=str(art))
    dev = ManualDevice(fleet, "pi", 5)
    dev.t.subscribe(device_topic("pi", "artifact"))
    (art / "eval.onnx").write_bytes(b"not the model")
    fleet.drain()
    dev.inbox.clear()
    got = _fetch(fleet, dev, "eval.onnx")
    assert [f.path for f in got] == [MANIFEST_FILE]  # the transfer stops at the bad file
    assert fleet.coordinator.rejections == {"artifact_unavailable": 1}


def test_a_manifest_pointing_outside_its_directory_is_refused_at_start(model, tmp_path):
    art = tmp_path / "model"
    shutil.copytree(model[0], art)
    manifest = json.loads((art / MANIFEST_FILE).read_text())
    manifest["files"]["../secret"] = "0" * 64
    (art / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a plain relative path"):
        ArtifactServer(art)
    with pytest.raises(ArtifactError, match="no|cannot read"):
        ArtifactServer(tmp_path / "nowhere")


def test_artifacts_of_another_model_are_a_config_error(model, tmp_path):
    art = tmp_path / "model"
    shutil.copytree(model[0], art)
    manifest = json.loads((art / MANIFEST_FILE).read_text())
    manifest["model_id"] = "another"
    (art / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="another"):
        make_fleet(model, tmp_path, artifacts_dir=str(art))


def test_tasks_carry_the_manifest_digest_and_the_announcement_follows_the_rounds(model, tmp_path):
    art, manifest, _ = model
    fleet, dev = _served(model, tmp_path)
    digest = _sha((art / MANIFEST_FILE).read_bytes())

    def announced() -> Announcement:
        late = fleet.broker.connect(f"late-{len(fleet.wire)}")
        late.subscribe(ANNOUNCE_TOPIC)  # retained: a device that connects later still hears it
        msg = late.receive(0.0)
        late.close()
        fleet.wire.append(msg)
        assert msg.retain
        return decode_message(msg.payload)

    assert announced() == Announcement(manifest.model_id, 0, digest, 0, "idle", fleet.coordinator.session)
    assert fleet.coordinator.begin_round()
    fleet.drain()
    assert dev.task().manifest_sha256 == digest
    assert announced() == Announcement(manifest.model_id, 0, digest, 1, "training", fleet.coordinator.session)
    fleet.clock.advance(fleet.coordinator.config.round_deadline_s)
    assert not fleet.coordinator.tick().committed
    assert announced() == Announcement(manifest.model_id, 0, digest, 0, "idle", fleet.coordinator.session)


def test_a_device_without_the_model_fetches_it_trains_and_the_round_commits(model, tmp_path):
    """End to end with the real agent: task -> FetchRequest -> ArtifactFiles (checked against
    the task's manifest_sha256) -> install -> train -> Update -> commit."""
    art, manifest, _ = model
    fleet = make_fleet(model, tmp_path, artifacts_dir=str(art))
    runtime = DeviceRuntime("fresh", local_data(np.random.default_rng(3), 12), {}, tmp_path / "devices")
    agent = DeviceAgent(runtime, fleet.broker.connect("fresh"), clock=fleet.clock)
    agent.start()
    fleet.agents.append(agent)
    fleet.drain()
    assert fleet.coordinator.begin_round()
    fleet.drain()
    record = fleet.coordinator.tick()
    assert record is not None and record.committed and record.reports == 1
    assert manifest.model_id in runtime.model_dirs
    assert fleet.coordinator.metrics.transfers._value.get() == 1
    assert fleet.coordinator.rejections == {}
