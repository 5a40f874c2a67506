"""A secure round's training stops the upload margin before its deadline, counted from the task's
arrival (edge_runtime/secagg_intake.py). It trained up to the deadline counted from the start of
training: its KeyAdvertisement, which the coordinator's advertise stage wants by the round's
deadline (counted from the send), came after it, and the device was left out of the cohort. The
margin's oracle is computed here by hand: latency_s + the advertisement's bytes (as the device
really sends it) / the rate."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from fedge.edge_runtime.kernel.codec import encode_message
from fedge.edge_runtime.kernel.protocol import (
    ArtifactFile,
    CompressionSpec,
    Decline,
    TaskHyper,
    TrainTask,
    device_topic,
)
from fedge.edge_runtime.kernel.secagg.identity import generate_identity
from fedge.edge_runtime.kernel.secagg.messages import KeyAdvertisement, SecAggSpec, SecAggTask
from fedge.edge_runtime.kernel.update_codec import encode_dense
from fedge.edge_runtime.uplink import Uplink
from fedge.edge_runtime.upload_margin import NO_TIME_TO_UPLOAD, UploadLink, advertisement_bytes
from tests.edge_runtime.one_device import DEVICE, pump, stepping_device
from tests.tiny_model import build_tiny_model

STEP_S = 0.25  # each training step takes this long on the device's clock
ARRIVAL = 100.0  # the device's clock when the task arrives
DEADLINE_S = 60.0
SLOW = UploadLink(latency_s=0.5, bytes_per_s=20.0)  # a few hundred bytes take seconds
ENDLESS = TaskHyper(epochs=1000, batch_size=1, lr=1e-6, divergence_factor=0.0)  # trains until stopped
SHORT = TaskHyper(epochs=1, batch_size=8)  # 5 steps


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("artifacts"))


def _device(model, root, **agent_kw):
    """(agent, coordinator client on its update channel, clock): every training step takes STEP_S."""
    return stepping_device(model, root, STEP_S, ARRIVAL, **agent_kw)


def _task(model, hyper: TaskHyper, **kw) -> SecAggTask:
    _, manifest, runtime = model
    task = TrainTask(3, "secure-t1", DEVICE, manifest.model_id, 0, encode_dense(runtime.initial("shared")),
                     hyper=hyper, deadline_s=DEADLINE_S,
                     compression=CompressionSpec(quant_bits=32, error_feedback=False, clip_norm=0.5))
    return SecAggTask(replace(task, **kw), SecAggSpec(), sharing=2)


def _answer(agent, coord, message):
    """Send the secure task; the device's one KeyAdvertisement or Decline."""
    coord.publish(device_topic(DEVICE, "task"), encode_message(message))
    (reply,) = [r for r in pump(agent, coord) if isinstance(r, (KeyAdvertisement, Decline))]
    return reply


def _advertisement_size(model, root, **agent_kw) -> int:
    """The bytes the device's KeyAdvertisement for the test task takes on the wire (a run that trains to the end)."""
    agent, coord, _ = _device(model, root, **agent_kw)
    reply = _answer(agent, coord, _task(model, SHORT))
    assert isinstance(reply, KeyAdvertisement), reply
    return len(encode_message(reply))


def _stopped_at(agent, coord, clock, message) -> float:
    reply = _answer(agent, coord, message)
    assert isinstance(reply, Decline) and (reply.reason, reply.stage) == ("aborted:deadline", "during"), reply
    return clock.now()


@pytest.mark.parametrize("link, signed", [(UploadLink(), False), (SLOW, False), (SLOW, True)],
                         ids=["default", "slow", "slow-signed"])
def test_a_secure_rounds_training_stops_its_advertisements_upload_before_the_deadline(model, tmp_path, link, signed):
    """Before: both stopped at ARRIVAL + DEADLINE_S, and the advertisement left after the deadline.
    Signed: the signature's 64 bytes are 3.2 s of the slow link's margin."""
    kw = {"secagg_identity": generate_identity()[0]} if signed else {}
    margin = link.latency_s + _advertisement_size(model, tmp_path / "sized", **kw) / link.bytes_per_s
    agent, coord, clock = _device(model, tmp_path / "run", upload_link=link, **kw)
    stopped = _stopped_at(agent, coord, clock, _task(model, ENDLESS))
    want = ARRIVAL + DEADLINE_S - margin  # the first step at or past it stops training
    assert want <= stopped < want + STEP_S, (stopped, want)


def test_the_deadline_counts_from_the_tasks_arrival_not_from_when_its_model_came(model, tmp_path):
    """The task's model is fetched: 20 s pass before its files come. Before, the deadline counted
    from the start of training (ARRIVAL + 20 + DEADLINE_S)."""
    margin = SLOW.latency_s + _advertisement_size(model, tmp_path / "sized") / SLOW.bytes_per_s
    agent, coord, clock = _device(model, tmp_path / "run", upload_link=SLOW)
    message, items = _to_fetch(model, _task(model, ENDLESS))
    (reply,) = _fetch_after(agent, coord, clock, message, items, wait_s=20.0)
    assert isinstance(reply, Decline) and reply.reason == "aborted:deadline", reply
    want = ARRIVAL + DEADLINE_S - margin
    assert want <= clock.now() < want + STEP_S, (clock.now(), want)


@pytest.mark.parametrize("wait_s, reason", [(50.0, NO_TIME_TO_UPLOAD), (DEADLINE_S, "deadline_passed")])
def test_a_model_that_comes_too_late_to_train_and_upload_is_declined_before_training(model, tmp_path, wait_s, reason):
    """50 s of 60 gone leaves 10, less than the 12.8 s margin (0.5 + 246 bytes / 20); 60 s is the
    deadline. Before, the task trained (its deadline counted from then) and advertised after the
    coordinator's deadline."""
    agent, coord, clock = _device(model, tmp_path, upload_link=SLOW)
    message, items = _to_fetch(model, _task(model, SHORT))
    (reply,) = _fetch_after(agent, coord, clock, message, items, wait_s)
    assert isinstance(reply, Decline) and (reply.reason, reply.stage) == (reason, "before"), reply
    assert clock.now() == ARRIVAL + wait_s  # not one step trained


def test_a_declined_secure_task_that_comes_again_gets_its_decline_again_and_is_not_trained(model, tmp_path):
    """The review's reproduction: declined no_time_to_upload at ARRIVAL + 50, the same task redelivered
    was taken as new (its deadline counted from the copy) and trained until ARRIVAL + 97.5, 37 s past the
    coordinator's deadline, to be thrown away."""
    agent, coord, clock = _device(model, tmp_path, upload_link=SLOW)
    message, items = _to_fetch(model, _task(model, ENDLESS))
    (first,) = _fetch_after(agent, coord, clock, message, items, wait_s=50.0)
    assert first.reason == NO_TIME_TO_UPLOAD
    before = clock.now()
    again = _answer(agent, coord, message)
    assert again == first and clock.now() == before  # the same Decline, not one step trained


@pytest.mark.parametrize("signed", [False, True])
def test_the_advertisements_size_is_what_the_device_sends(model, tmp_path, signed):
    identity = generate_identity()[0] if signed else None
    sent = _advertisement_size(model, tmp_path, secagg_identity=identity)
    assert advertisement_bytes(_task(model, SHORT).task, DEVICE, signed) == sent


def test_a_learned_rate_sets_the_advertisements_margin_without_the_updates_envelope():
    """Three timed 10 kB uploads of 2.5 s over a 0.5 s latency: 5,000 bytes/s learned. The
    advertisement's bytes are its whole message: no envelope is added."""
    uplink = Uplink(DEVICE, None, None, 10.0, 3600.0, UploadLink(latency_s=0.5, bytes_per_s=125_000.0,
                                                                  learn_rate=True))
    for n in range(3):
        uplink.rate.sent(f"u{n}", 10_000, 0.0, frame_bytes=9_000)
        uplink.rate.acked(f"u{n}", 2.5)
    task = TrainTask(1, "t", DEVICE, "m", 0, b"", deadline_s=DEADLINE_S)
    assert uplink.margin_s(task, 300) == pytest.approx(0.5 + 300 / 5_000.0)


def _to_fetch(model, message: SecAggTask) -> tuple[SecAggTask, list[ArtifactFile]]:
    """The task for the tiny model under a model id the device does not have, and that model's files."""
    art, _, _ = model
    doc = json.loads((art / "manifest.json").read_bytes())
    manifest = json.dumps({**doc, "model_id": "fetched"}).encode()
    sha = hashlib.sha256(manifest).hexdigest()
    files = {rel: (art / rel).read_bytes() for rel in doc["files"]}
    items = [ArtifactFile("fetched", "manifest.json", sha, manifest, 0, 1 + len(files))]
    items += [ArtifactFile("fetched", rel, hashlib.sha256(data).hexdigest(), data, i + 1, 1 + len(files))
              for i, (rel, data) in enumerate(files.items())]
    task = replace(message.task, model_id="fetched", manifest_sha256=sha)
    return replace(message, task=task), items


def _fetch_after(agent, coord, clock, message, items, wait_s: float) -> list:
    """Send the task, let wait_s pass, send its model's files; the KeyAdvertisements and Declines sent."""
    coord.publish(device_topic(DEVICE, "task"), encode_message(message))
    sent = pump(agent, coord)
    clock.advance(wait_s)
    for item in items:
        coord.publish(device_topic(DEVICE, "artifact"), encode_message(item))
        sent += pump(agent, coord)
    return [r for r in sent if isinstance(r, (KeyAdvertisement, Decline))]
